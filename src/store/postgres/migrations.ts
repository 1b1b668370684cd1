/**
 * Schema migrations of the PostgreSQL mail store, applied with the users
 * backend's migrate() under the same advisory lock but recorded in a history
 * table of their own (poplar_store_migrations), so store and users can share
 * one schema without their version numbers colliding. Append-only: never
 * edit a shipped migration, add the next version.
 *
 * Every table's key begins with mailbox_id and every query names it, so the
 * tables can later be distributed by mailbox (Citus-style, co-located).
 */
import type { Pool } from 'pg';
import { migrate, schemaVersion, type Migration } from '../../auth/postgres/migrations.js';

export const STORE_HISTORY_TABLE = 'poplar_store_migrations';

export const STORE_MIGRATIONS: readonly Migration[] = Object.freeze([
  {
    version: 1,
    name: 'store_001_mailboxes_messages_bodies',
    sql: `
CREATE TABLE poplar_mailboxes (
  mailbox_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  username      text NOT NULL UNIQUE,
  uid_validity  bigint NOT NULL,
  next_uid      bigint NOT NULL DEFAULT 1,
  lease_holder  text,
  lease_token   bigint NOT NULL DEFAULT 0,
  lease_expires timestamptz,
  needs_sweep   boolean NOT NULL DEFAULT false,
  created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX poplar_mailboxes_needs_sweep ON poplar_mailboxes (mailbox_id) WHERE needs_sweep;

CREATE TABLE poplar_bodies (
  mailbox_id bigint NOT NULL REFERENCES poplar_mailboxes (mailbox_id) ON DELETE CASCADE,
  body_id    bigint GENERATED ALWAYS AS IDENTITY,
  sha256     bytea NOT NULL,
  octets     bigint NOT NULL,
  chunks     int NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (mailbox_id, body_id)
);
CREATE INDEX poplar_bodies_sha256 ON poplar_bodies (mailbox_id, sha256);

CREATE TABLE poplar_body_chunks (
  mailbox_id bigint NOT NULL,
  body_id    bigint NOT NULL,
  seq        int NOT NULL,
  data       bytea NOT NULL,
  PRIMARY KEY (mailbox_id, body_id, seq),
  FOREIGN KEY (mailbox_id, body_id) REFERENCES poplar_bodies (mailbox_id, body_id) ON DELETE CASCADE
);
-- Out of line, uncompressed: mail is mostly base64 and compressed attachments that pglz barely
-- shrinks, and RETR then reads the bytes without decompressing them.
ALTER TABLE poplar_body_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE poplar_messages (
  mailbox_id         bigint NOT NULL,
  uid                bigint NOT NULL,
  uidl               text NOT NULL,
  size               bigint NOT NULL,
  body_id            bigint NOT NULL,
  arrived_at         timestamptz NOT NULL DEFAULT now(),
  first_retrieved_at timestamptz,
  -- The listing at login (uid, UIDL, size, body) comes from this one index.
  PRIMARY KEY (mailbox_id, uid) INCLUDE (uidl, size, body_id),
  UNIQUE (mailbox_id, uidl),
  FOREIGN KEY (mailbox_id, body_id) REFERENCES poplar_bodies (mailbox_id, body_id)
);
CREATE INDEX poplar_messages_body ON poplar_messages (mailbox_id, body_id);
`,
  },
  {
    version: 2,
    name: 'store_002_listing_stamp',
    // A node may keep a big maildrop's listing in memory and reuse it while the mailbox row's
    // listing_stamp is the one it read with it. Triggers give the row a new random stamp in the same
    // transaction as any change to what a listing holds (uid, UIDL, size, body), whoever writes the
    // rows. Random rather than counted: a commit lost in a crash or a failover can never come back as
    // the same stamp over different messages. NULL (rows from before this version): never reused.
    sql: `
ALTER TABLE poplar_mailboxes ADD COLUMN listing_stamp uuid;
ALTER TABLE poplar_mailboxes ALTER COLUMN listing_stamp SET DEFAULT gen_random_uuid();

CREATE FUNCTION poplar_messages_inserted_or_deleted() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE poplar_mailboxes SET listing_stamp = gen_random_uuid()
   WHERE mailbox_id IN (SELECT DISTINCT mailbox_id FROM poplar_changed_messages);
  RETURN NULL;
END $$;

CREATE FUNCTION poplar_messages_updated() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE poplar_mailboxes SET listing_stamp = gen_random_uuid() WHERE mailbox_id IN (OLD.mailbox_id, NEW.mailbox_id);
  RETURN NULL;
END $$;

CREATE FUNCTION poplar_messages_truncated() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE poplar_mailboxes SET listing_stamp = gen_random_uuid();
  RETURN NULL;
END $$;

CREATE TRIGGER poplar_messages_insert_stamp AFTER INSERT ON poplar_messages
  REFERENCING NEW TABLE AS poplar_changed_messages FOR EACH STATEMENT EXECUTE FUNCTION poplar_messages_inserted_or_deleted();
CREATE TRIGGER poplar_messages_delete_stamp AFTER DELETE ON poplar_messages
  REFERENCING OLD TABLE AS poplar_changed_messages FOR EACH STATEMENT EXECUTE FUNCTION poplar_messages_inserted_or_deleted();
-- first_retrieved_at (set at QUIT) is not part of a listing: such updates keep the stamp.
CREATE TRIGGER poplar_messages_update_stamp AFTER UPDATE OF mailbox_id, uid, uidl, size, body_id ON poplar_messages
  FOR EACH ROW WHEN (OLD.mailbox_id IS DISTINCT FROM NEW.mailbox_id OR OLD.uid IS DISTINCT FROM NEW.uid
    OR OLD.uidl IS DISTINCT FROM NEW.uidl OR OLD.size IS DISTINCT FROM NEW.size OR OLD.body_id IS DISTINCT FROM NEW.body_id)
  EXECUTE FUNCTION poplar_messages_updated();
CREATE TRIGGER poplar_messages_truncate_stamp AFTER TRUNCATE ON poplar_messages
  FOR EACH STATEMENT EXECUTE FUNCTION poplar_messages_truncated();
`,
  },
  {
    version: 3,
    name: 'store_003_listing_stamp_for_existing_mailboxes',
    // Mailboxes made before version 2 have no stamp, so their listings were never kept: give them
    // one. No node holds a listing of theirs yet, so any new value is right.
    sql: `UPDATE poplar_mailboxes SET listing_stamp = gen_random_uuid() WHERE listing_stamp IS NULL;`,
  },
]);

export const STORE_SCHEMA_VERSION = STORE_MIGRATIONS.reduce((v, m) => Math.max(v, m.version), 0);

/** Applies the store's pending migrations (several nodes starting at once apply each exactly once). */
export function migrateStore(pool: Pool, logger?: (message: string) => void): Promise<number[]> {
  return migrate(pool, { migrations: STORE_MIGRATIONS, historyTable: STORE_HISTORY_TABLE, logger });
}

export function storeSchemaVersion(pool: Pool): Promise<number> {
  return schemaVersion(pool, STORE_HISTORY_TABLE);
}
