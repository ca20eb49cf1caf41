-- Users, roles, API keys and refresh tokens (src/identity).
-- Secrets are never stored: passwords as argon2id PHC strings, API keys and refresh
-- tokens as HMAC-SHA-256 digests under a server pepper.

CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    username       text        NOT NULL,
    email          text,
    password_hash  text        NOT NULL,
    role           text        NOT NULL CHECK (role IN ('USER', 'ADMIN', 'SUPER_ADMIN')),
    enabled        boolean     NOT NULL DEFAULT true,
    -- Bumped on password change, role change, disable and logout-everywhere: access tokens
    -- carry the version they were issued under and die when it moves.
    token_version  bigint      NOT NULL DEFAULT 0,
    -- Models the account may use (globs); empty means all. Keys are clamped to these.
    models         text[]      NOT NULL DEFAULT '{}',
    rpm_limit      integer     CHECK (rpm_limit >= 0),
    tpm_limit      bigint      CHECK (tpm_limit >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);

-- Usernames are unique regardless of case, so `Alice` cannot shadow `alice`.
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));

CREATE TABLE api_keys (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    key_hash        bytea       NOT NULL UNIQUE,
    -- Non-secret start of the key for listings (`sk-llmmux-AbCd`).
    display_prefix  text        NOT NULL,
    models          text[]      NOT NULL DEFAULT '{}',
    rpm_limit       integer     CHECK (rpm_limit >= 0),
    tpm_limit       bigint      CHECK (tpm_limit >= 0),
    expires_at      timestamptz,
    enabled         boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX api_keys_user ON api_keys (user_id);

-- One row per issued refresh token; a family is one login session. A token is used once
-- (rotation); presenting a used one revokes its whole family.
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_revoked ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
