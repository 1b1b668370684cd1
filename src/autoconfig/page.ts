/**
 * The "set up your mail client" page: the user types an address, the page
 * comes back with the settings to copy and, for Apple devices, the profile
 * to download. Rendered on the server, without scripts: the page's
 * Content-Security-Policy allows no script at all, and every value is HTML-
 * escaped.
 */
import { createHash } from 'node:crypto';
import type { MailAddress } from './address.js';
import { loginName } from './address.js';
import type { AuthMethod, ClientSettings, Endpoint } from './settings.js';

const STYLE = `
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:44rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem}
form{display:grid;gap:.5rem;background:#fff;padding:1rem;border-radius:8px;border:1px solid #d8dce3}
input{font:inherit;padding:.4rem .5rem;border:1px solid #aab;border-radius:4px}
button,.download{font:inherit;padding:.5rem 1rem;border-radius:4px;border:0;background:#2b5fd9;color:#fff;text-decoration:none;display:inline-block;justify-self:start;cursor:pointer}
section{background:#fff;margin-top:1rem;padding:1rem;border-radius:8px;border:1px solid #d8dce3}
table{border-collapse:collapse;width:100%;margin-bottom:1rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e5e8ee;vertical-align:top}
th{width:12rem;font-weight:600}
td{font-family:ui-monospace,monospace}
.error{color:#a3001b;font-weight:600}
.note{color:#555;font-size:.9rem}
`;

/** The page's Content-Security-Policy: its one inline style block, nothing else. */
export const PAGE_CSP = [
  "default-src 'none'",
  `style-src 'sha256-${createHash('sha256').update(STYLE).digest('base64')}'`,
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

/** `s` as HTML text or a double-quoted attribute value. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const SECURITY = { tls: 'SSL/TLS', starttls: 'STARTTLS' } as const;
const AUTH: Record<AuthMethod, string> = {
  'password-cleartext': 'Normal password',
  'password-encrypted': 'Encrypted password (CRAM-MD5)',
  OAuth2: 'OAuth2',
};

export type PageState =
  | { readonly kind: 'form' }
  | { readonly kind: 'error'; readonly typed: string; readonly message: string }
  | { readonly kind: 'settings'; readonly address: MailAddress; readonly name: string | undefined; readonly profile: boolean };

function row(label: string, field: string, value: string): string {
  return `<tr><th scope="row">${escapeHtml(label)}</th><td data-field="${field}">${escapeHtml(value)}</td></tr>`;
}

function endpointTable(caption: string, id: string, e: Endpoint, auth: string, login: string): string {
  return [
    `<table id="${id}"><caption>${escapeHtml(caption)}</caption>`,
    row('Server', 'server', e.hostname),
    row('Port', 'port', String(e.port)),
    row('Connection security', 'security', SECURITY[e.security]),
    row('Authentication', 'auth', auth),
    row('Username', 'username', login),
    '</table>',
  ].join('\n');
}

/** The whole page for `state`. */
export function setupPage(s: ClientSettings, state: PageState): string {
  const typed = state.kind === 'settings' ? state.address.address : state.kind === 'error' ? state.typed : '';
  const name = state.kind === 'settings' ? (state.name ?? '') : '';
  const parts: string[] = [
    '<!DOCTYPE html>',
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>Set up your mail client${s.displayName !== undefined ? ` – ${escapeHtml(s.displayName)}` : ''}</title>`,
    `<style>${STYLE}</style></head><body><main>`,
    '<h1>Set up your mail client</h1>',
    '<p>Thunderbird and Outlook find these settings on their own when you add the account; other clients need them typed in.</p>',
    '<form method="get" id="lookup">',
    '<label for="emailaddress">Your email address</label>',
    `<input type="email" id="emailaddress" name="emailaddress" required maxlength="254" autocomplete="email" value="${escapeHtml(typed)}">`,
    '<label for="name">Your name (optional, shown to the people you write to)</label>',
    `<input type="text" id="name" name="name" maxlength="100" autocomplete="name" value="${escapeHtml(name)}">`,
    '<button type="submit" id="show">Show the settings</button>',
    '</form>',
  ];
  if (state.kind === 'error') parts.push(`<section><p class="error" id="error" role="alert">${escapeHtml(state.message)}</p></section>`);
  if (state.kind === 'settings') {
    const a = state.address;
    const login = loginName(a, s.username);
    const auth = AUTH[s.auth[0]!];
    parts.push('<section id="settings">', `<h2>Settings for ${escapeHtml(a.address)}</h2>`);
    s.incoming.forEach((e, i) => {
      parts.push(endpointTable(i === 0 ? 'Incoming mail (POP3)' : 'Or, if your client cannot use the port above (POP3)', i === 0 ? 'incoming' : `incoming-${i + 1}`, e, auth, login));
    });
    const others = [...s.auth.slice(1).map((m) => AUTH[m]), ...s.scram];
    if (others.length > 0) parts.push(`<p class="note">The server also accepts: ${escapeHtml(others.join(', '))}.</p>`);
    if (s.outgoing !== undefined) parts.push(endpointTable('Outgoing mail (SMTP)', 'outgoing', s.outgoing, AUTH['password-cleartext'], login));
    else parts.push('<p class="note" id="no-outgoing">No outgoing server is configured here: use the one your provider gives you for sending.</p>');
    parts.push(
      `<p class="note">${s.leaveMessagesOnServer
        ? `Leave messages on the server${s.daysToLeaveMessagesOnServer !== undefined ? ` for ${s.daysToLeaveMessagesOnServer} days` : ''} after downloading them.`
        : 'Your client may delete messages from the server once it has downloaded them.'}</p>`,
    );
    if (state.profile) {
      const q = new URLSearchParams({ emailaddress: a.address, ...(state.name !== undefined && state.name !== '' ? { name: state.name } : {}) });
      parts.push(
        '<h2>iPhone, iPad and Mac</h2>',
        `<p><a class="download" id="apple-profile" href="apple/mail.mobileconfig?${escapeHtml(q.toString())}" download>Download the profile</a></p>`,
        '<p class="note">Open the downloaded profile (Settings, or System Settings on a Mac), install it and type your password.</p>',
      );
    } else {
      parts.push('<p class="note" id="no-profile">No profile for Apple devices: it needs an outgoing server, and none is configured here. Add the account by hand with the settings above.</p>');
    }
    parts.push('</section>');
  }
  parts.push('</main></body></html>', '');
  return parts.join('\n');
}
