/** The POP3 client, published as `poplar/client`: see docs/client.md. */
export {
  Pop3Client,
  type ConnectOptions,
  type LoginOptions,
  type OAuth2Options,
  type MessageHandler,
  type BufferedMessageHandler,
  type RetrEachOptions,
  type TlsMode,
  type CallOptions,
} from './pop3-client.js';
export {
  Pop3ClientError,
  Pop3ServerError,
  Pop3ProtocolError,
  Pop3ConnectionLostError,
  Pop3LimitError,
  Pop3TimeoutError,
  Pop3AbortError,
  Pop3TlsError,
  Pop3PolicyError,
} from './errors.js';
export { DEFAULT_MAX_LINES, DEFAULT_MAX_OCTETS, PIPELINE_WINDOW } from './connection.js';
export { LOGIN_PREFERENCE, chooseLoginMethod, cleartextAllowed, isLoopback, sendsCleartextSecret, type CleartextContext, type MechanismChoice, type MechanismChoiceInput } from './policy.js';
export { isValidUid, knownRespCode, parseStatusLine, type ListEntry, type MaildropStat, type StatusLine, type UidlEntry } from './reply.js';
export { normalizeFingerprint } from './tls.js';
export { CLIENT_MECHANISMS, clientMechanism, type ClientMechanismOptions } from '../protocol/sasl/index.js';
export type { ClientMechanism } from '../protocol/sasl/mechanism.js';
