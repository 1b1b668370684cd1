/**
 * Built-in OAuth 2.0 provider settings for mail (`provider = "google"` or
 * `"microsoft"` in an account's `[oauth2]` table), merged under what the
 * account sets itself: every value here can be overridden in the config.
 */

export type OAuthProvider = 'google' | 'microsoft';
export type AuthorizeFlow = 'device' | 'browser';

/** What the token code needs, after the preset and the account's own settings are merged. */
export interface OAuthEndpoints {
  readonly provider: OAuthProvider | undefined;
  readonly token_endpoint: string;
  readonly authorization_endpoint: string | undefined;
  readonly device_authorization_endpoint: string | undefined;
  /** Scope asked for when signing in. */
  readonly scope: string | undefined;
  /** Scope sent with a refresh (Microsoft wants it again; Google takes none). */
  readonly refresh_scope: string | undefined;
  /** Extra query parameters of the authorization request (Google needs `access_type=offline` for a refresh token). */
  readonly authorization_params: Readonly<Record<string, string>>;
  /** Host name in the loopback redirect URI: the address the provider expects (Microsoft registers `http://localhost`). */
  readonly redirect_host: '127.0.0.1' | 'localhost';
  /** The sign-in flow to use when neither `--device` nor `--browser` is given, if the preset prefers one. */
  readonly flow: AuthorizeFlow | undefined;
}

export interface OAuthEndpointSettings {
  readonly provider?: OAuthProvider | undefined;
  readonly tenant?: string | undefined;
  readonly token_endpoint?: string | undefined;
  readonly authorization_endpoint?: string | undefined;
  readonly device_authorization_endpoint?: string | undefined;
  readonly scope?: string | undefined;
  readonly redirect_host?: '127.0.0.1' | 'localhost' | undefined;
  readonly flow?: AuthorizeFlow | undefined;
}

interface Preset {
  readonly token_endpoint: string;
  readonly authorization_endpoint: string;
  readonly device_authorization_endpoint: string;
  readonly scope: string;
  readonly refreshWithScope: boolean;
  readonly authorization_params: Readonly<Record<string, string>>;
  readonly redirect_host: '127.0.0.1' | 'localhost';
  readonly flow: AuthorizeFlow | undefined;
}

/** Google's mail scope covers POP and IMAP. Its device flow does not allow that scope, so sign-in defaults to the browser. */
function google(): Preset {
  return {
    authorization_endpoint: 'https://accounts.google.com/o/oauth2/v2/auth',
    token_endpoint: 'https://oauth2.googleapis.com/token',
    device_authorization_endpoint: 'https://oauth2.googleapis.com/device/code',
    scope: 'https://mail.google.com/',
    refreshWithScope: false,
    // Without these Google returns no refresh token (or none on a second sign-in).
    authorization_params: { access_type: 'offline', prompt: 'consent' },
    redirect_host: '127.0.0.1',
    flow: 'browser',
  };
}

/** Microsoft identity platform v2.0; `offline_access` is what brings a refresh token. */
function microsoft(tenant: string): Preset {
  const base = `https://login.microsoftonline.com/${encodeURIComponent(tenant)}/oauth2/v2.0`;
  return {
    authorization_endpoint: `${base}/authorize`,
    token_endpoint: `${base}/token`,
    device_authorization_endpoint: `${base}/devicecode`,
    scope: 'https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/IMAP.AccessAsUser.All offline_access',
    refreshWithScope: true,
    authorization_params: {},
    redirect_host: 'localhost',
    flow: undefined,
  };
}

export const MICROSOFT_DEFAULT_TENANT = 'common';

/** The preset (if any) under the account's own settings. Throws when there is no token endpoint at all. */
export function oauthEndpoints(o: OAuthEndpointSettings): OAuthEndpoints {
  const p = o.provider === 'google' ? google() : o.provider === 'microsoft' ? microsoft(o.tenant ?? MICROSOFT_DEFAULT_TENANT) : undefined;
  const token_endpoint = o.token_endpoint ?? p?.token_endpoint;
  if (token_endpoint === undefined) throw new RangeError('no token endpoint: set provider or token_endpoint');
  const scope = o.scope ?? p?.scope;
  return {
    provider: o.provider,
    token_endpoint,
    authorization_endpoint: o.authorization_endpoint ?? p?.authorization_endpoint,
    device_authorization_endpoint: o.device_authorization_endpoint ?? p?.device_authorization_endpoint,
    scope,
    // A scope written in the config was always sent with refreshes; a preset's only where the provider wants it.
    refresh_scope: o.scope ?? (p?.refreshWithScope === true ? scope : undefined),
    authorization_params: p?.authorization_params ?? {},
    redirect_host: o.redirect_host ?? p?.redirect_host ?? '127.0.0.1',
    flow: o.flow ?? p?.flow,
  };
}
