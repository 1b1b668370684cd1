import { promises as fs } from 'node:fs';
import path from 'node:path';
import { generate } from 'selfsigned';

/**
 * The embedded default's certificate: made once, on first run, for
 * localhost/127.0.0.1/::1, so implicit TLS and STLS work out of the box.
 * Returns true when a new one was created.
 */
export async function ensureSelfSignedCertificate(certFile: string, keyFile: string, hostname = 'localhost'): Promise<boolean> {
  try {
    await fs.access(certFile);
    await fs.access(keyFile);
    return false;
  } catch {
    // create below
  }
  const now = new Date();
  const pems = await generate([{ name: 'commonName', value: hostname }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now.getTime() - 60_000),
    notAfterDate: new Date(now.getTime() + 825 * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: hostname },
          ...(hostname !== 'localhost' ? [{ type: 2 as const, value: 'localhost' }] : []),
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });
  await fs.mkdir(path.dirname(certFile), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.dirname(keyFile), { recursive: true, mode: 0o700 });
  await fs.writeFile(keyFile, pems.private, { mode: 0o600 });
  await fs.writeFile(certFile, pems.cert, { mode: 0o644 });
  return true;
}

export async function readTlsFiles(certFile: string, keyFile: string): Promise<{ cert: Buffer; key: Buffer }> {
  const [cert, key] = await Promise.all([fs.readFile(certFile), fs.readFile(keyFile)]);
  return { cert, key };
}
