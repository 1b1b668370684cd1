/**
 * The names of the schemes hashPassword() can produce, apart from the code
 * that produces them (the CLI lists them without loading argon2 & co.).
 */
export type HashScheme =
  | 'ARGON2ID'
  | 'SHA512-CRYPT'
  | 'SHA256-CRYPT'
  | 'BLF-CRYPT'
  | 'PLAIN'
  | 'CRAM-MD5'
  | 'SCRAM-SHA-1'
  | 'SCRAM-SHA-256';
export const HASH_SCHEMES: readonly HashScheme[] = Object.freeze([
  'ARGON2ID',
  'SHA512-CRYPT',
  'SHA256-CRYPT',
  'BLF-CRYPT',
  'PLAIN',
  'CRAM-MD5',
  'SCRAM-SHA-1',
  'SCRAM-SHA-256',
] as const);
