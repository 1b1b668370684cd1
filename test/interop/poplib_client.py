"""Fetch a whole maildrop with Python's poplib; used by clients.test.ts.

usage: poplib_client.py MODE HOST PORT CAFILE USER PASSWORD OUTDIR
MODE is plain (USER/PASS in the clear), stls (STLS, then USER/PASS) or ssl (POP3_SSL).
Every message is written to OUTDIR/NNNNN exactly as poplib hands it over
(lines joined with CRLF, each line ending in CRLF); a JSON summary goes to stdout.
"""
import json
import os
import poplib
import ssl
import sys

# poplib refuses lines over 2048 octets (a client-side guard, poplib._MAXLINE).
# The corpus has a 5000-octet line, so raise the limit.
poplib._MAXLINE = 1 << 20


def main():
    mode, host, port, cafile, user, password, outdir = sys.argv[1:8]
    port = int(port)
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    out = {'mode': mode}
    if mode == 'ssl':
        conn = poplib.POP3_SSL(host, port, context=ctx, timeout=30)
    else:
        conn = poplib.POP3(host, port, timeout=30)
    out['welcome'] = conn.getwelcome().decode('latin1')
    out['capa_before_login'] = {k: v for k, v in conn.capa().items()}
    if mode == 'stls':
        out['stls'] = conn.stls(context=ctx).decode('latin1')
        out['capa_after_stls'] = {k: v for k, v in conn.capa().items()}
    if mode != 'plain':
        out['tls_version'] = conn.sock.version()
    out['user'] = conn.user(user).decode('latin1')
    out['pass'] = conn.pass_(password).decode('latin1')
    out['capa_after_login'] = {k: v for k, v in conn.capa().items()}
    count, size = conn.stat()
    out['stat'] = [count, size]
    _, listing, _ = conn.list()
    out['list'] = [[int(x) for x in l.split()] for l in listing]
    _, uidls, _ = conn.uidl()
    out['uidl'] = [[int(l.split()[0]), l.split()[1].decode('latin1')] for l in uidls]
    out['uidl_single'] = [conn.uidl(n).decode('latin1') for n in (1, count)]
    retr = []
    for n in range(1, count + 1):
        resp, lines, octets = conn.retr(n)
        data = b''.join(l + b'\r\n' for l in lines)
        with open(os.path.join(outdir, '%05d' % n), 'wb') as f:
            f.write(data)
        retr.append({'n': n, 'resp': resp.decode('latin1'), 'octets': octets})
    out['retr'] = retr
    out['quit'] = conn.quit().decode('latin1')
    json.dump(out, sys.stdout)


if __name__ == '__main__':
    main()
