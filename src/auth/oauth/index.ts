export { OAuthAuthenticator } from './authenticator.js';
export type { OAuthRuntimeOptions } from './authenticator.js';
export { OAUTH_ALGORITHMS, OAUTH_DEFAULTS, OAuthConfigSchema } from './config.js';
export type { OAuthAlgorithm, OAuthConfig, OAuthOptions } from './config.js';
