/**
 * What the autoconfig tests share: requests over real sockets (HTTP and
 * HTTPS, any method, body, Host), and Python's own XML and plist parsers
 * to read what Poplar wrote (an independent reader, not Poplar's).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface RequestOptions {
  method?: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** HTTPS, trusting this certificate. */
  ca?: string | Buffer;
  /** Send the body in chunks (no Content-Length). */
  chunked?: boolean;
}

export function request(port: number, path: string, o: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const options = { host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: { ...o.headers }, ...(o.ca !== undefined ? { ca: o.ca, servername: 'localhost' } : {}) };
    const req = (o.ca !== undefined ? https : http).request(options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (o.body !== undefined && o.chunked === true) {
      const b = Buffer.from(o.body);
      for (let i = 0; i < b.length; i += 4096) req.write(b.subarray(i, i + 4096));
      req.end();
    } else {
      req.end(o.body);
    }
  });
}

export interface XmlNode {
  /** `{namespace}local` for a name in a namespace, as ElementTree writes it. */
  tag: string;
  attrib: Record<string, string>;
  text: string;
  children: XmlNode[];
}

/** Debian's interpreter when there is one (a version manager's shim on PATH takes seconds to start). */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

const PY_XML = `
import sys, json, xml.etree.ElementTree as ET
def conv(e):
    return {'tag': e.tag, 'attrib': e.attrib, 'text': (e.text or '').strip(), 'children': [conv(c) for c in e]}
print(json.dumps(conv(ET.fromstring(sys.stdin.buffer.read()))))
`;

const PY_PLIST = `
import sys, json, plistlib
print(json.dumps(plistlib.loads(sys.stdin.buffer.read(), fmt=plistlib.FMT_XML)))
`;

/** `xml` read by Python's ElementTree (throws when it is not well-formed). */
export function pythonXml(xml: string): XmlNode {
  return JSON.parse(execFileSync(PYTHON, ['-c', PY_XML], { input: xml, encoding: 'utf8' })) as XmlNode;
}

/** `xml` read by Python's plistlib (throws when it is not a property list). */
export function pythonPlist(xml: string | Buffer): Record<string, unknown> {
  return JSON.parse(execFileSync(PYTHON, ['-c', PY_PLIST], { input: xml, encoding: 'utf8' })) as Record<string, unknown>;
}

export function children(n: XmlNode, tag: string): XmlNode[] {
  return n.children.filter((c) => c.tag === tag);
}

/** The text of the only child element `tag` (an error when there is none or several). */
export function only(n: XmlNode, tag: string): XmlNode {
  const found = children(n, tag);
  if (found.length !== 1) throw new Error(`${n.tag} has ${found.length} <${tag}> elements`);
  return found[0]!;
}

export function text(n: XmlNode, tag: string): string {
  return only(n, tag).text;
}
