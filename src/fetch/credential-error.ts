/** A secret could not be obtained. `temporary`: a command failed or the endpoint was unreachable. */
export class CredentialError extends Error {
  override name = 'CredentialError';
  readonly temporary: boolean;
  constructor(message: string, temporary: boolean, options?: ErrorOptions) {
    super(message, options);
    this.temporary = temporary;
  }
}
