-- The projection: every event with its decision, each email's merged state, email-to-record links,
-- and the consumer's stream position, all written in one transaction per batch.

CREATE TABLE events (
    event_id     text        PRIMARY KEY,
    stream_seq   bigint      NOT NULL,
    subject      text        NOT NULL,
    type         text        NOT NULL,
    org_id       text        NOT NULL,
    email_id     text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    decision     text        NOT NULL,
    reason       text,
    detail       text        NOT NULL DEFAULT ''
);
CREATE INDEX events_email_seq ON events (email_id, stream_seq);

CREATE TABLE emails (
    email_id              text        PRIMARY KEY,
    org_id                text        NOT NULL,
    subject               text,
    direction             text,
    source                text,
    source_display        text,
    transport             text,
    crm_originated        boolean     NOT NULL DEFAULT false,
    status                text,
    from_addr             text,
    to_addrs              text[]      NOT NULL DEFAULT '{}',
    cc_addrs              text[]      NOT NULL DEFAULT '{}',
    email_at              timestamptz NOT NULL,
    composed_at           timestamptz,
    sent_at               timestamptz,
    delivered_at          timestamptz,
    bounced_at            timestamptz,
    opened_at             timestamptz,
    clicked_at            timestamptz,
    received_at           timestamptz,
    rejected_at           timestamptz,
    deleted_at            timestamptz,
    complained_at         timestamptz,
    first_machine_open_at timestamptz,
    opens_human           integer     NOT NULL DEFAULT 0,
    opens_machine         integer     NOT NULL DEFAULT 0,
    clicks_human          integer     NOT NULL DEFAULT 0,
    clicks_machine        integer     NOT NULL DEFAULT 0,
    deferrals             integer     NOT NULL DEFAULT 0,
    complaints            integer     NOT NULL DEFAULT 0,
    bounce_recipient      text,
    bounce_kind           text,
    bounce_status         text,
    bounce_reply_code     integer,
    bounce_reason         text,
    bounce_diagnostic     text,
    bounce_reporting_mta  text,
    rejection_reason      text,
    rejection_detail      text,
    waiting_count         integer     NOT NULL DEFAULT 0,
    violation_count       integer     NOT NULL DEFAULT 0,
    event_count           integer     NOT NULL DEFAULT 0,
    state                 bytea       NOT NULL,
    updated_seq           bigint      NOT NULL
);
-- The org's newest-first listing (export, and the time ordering of the related list).
CREATE INDEX emails_org_time ON emails (org_id, email_at DESC, email_id DESC);
-- States are rewritten on every batch that touches the email: store them uncompressed.
ALTER TABLE emails ALTER COLUMN state SET STORAGE EXTERNAL;

CREATE TABLE email_records (
    email_id   text NOT NULL,
    module     text NOT NULL,
    record_id  text NOT NULL,
    org_id     text NOT NULL,
    PRIMARY KEY (email_id, module, record_id)
);
CREATE INDEX email_records_record ON email_records (org_id, record_id, email_id);

CREATE TABLE consumer_positions (
    consumer    text        PRIMARY KEY,
    stream      text        NOT NULL,
    last_seq    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
