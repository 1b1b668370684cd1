/**
 * The native `fs-ext` addon: flock(2) and fcntl(2), which Node does not
 * offer. It is built when the package is installed and loaded on first use,
 * so a machine where it did not build fails only where a lock is needed, with
 * a message that says why.
 */
import { createRequire } from 'node:module';

export interface FsExt {
  /** flock(2); flags 'ex', 'exnb', 'sh', 'shnb', 'un'. Throws (EAGAIN/EWOULDBLOCK) when a non-blocking lock is held elsewhere. */
  flockSync(fd: number, flags: 'ex' | 'exnb' | 'sh' | 'shnb' | 'un'): void;
  fcntl(fd: number, cmd: 'setlk', arg: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  readonly constants: { readonly F_WRLCK: number; readonly F_UNLCK: number };
}

let loaded: FsExt | Error | undefined;

export function fsExt(): FsExt {
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)('fs-ext') as FsExt;
    } catch (e) {
      loaded = new Error(`file locking needs the fs-ext native module, which did not load: ${(e as Error).message}`, { cause: e });
    }
  }
  if (loaded instanceof Error) throw loaded;
  return loaded;
}
