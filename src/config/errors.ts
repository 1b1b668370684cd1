/** A configuration mistake: the CLI prints the message as one line and exits with EX_CONFIG (78). */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
