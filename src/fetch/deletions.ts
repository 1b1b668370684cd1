/**
 * The last step of a fetch: DELEs go out pipelined as soon as they may
 * (a message already recorded, or a group just made durable); their answers
 * are collected before QUIT. A deletion counts only once QUIT is answered
 * +OK (until then the server may still roll it back).
 */
import type { Pop3Client } from '../client/index.js';

export class Deletions {
  readonly #client: Pop3Client;
  readonly #answers: Promise<boolean>[] = [];

  constructor(client: Pop3Client) {
    this.#client = client;
  }

  /** Send DELE n now (bound, so it can be handed around). A refused DELE is not counted. */
  readonly dele = (n: number): void => {
    this.#answers.push(this.#client.dele(n).then(
      () => true,
      () => false,
    ));
  };

  /** Wait for every DELE's answer, then QUIT; resolves with how many deletions the server accepted. */
  async quit(): Promise<number> {
    const marked = (await Promise.all(this.#answers)).filter(Boolean).length;
    await this.#client.quit();
    return marked;
  }
}
