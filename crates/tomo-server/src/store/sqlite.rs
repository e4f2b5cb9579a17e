//! SQLite implementation of [`Store`]: one file, WAL journal, migrations from
//! `migrations/sqlite`.
//!
//! The two reads every operator call makes, [`Store::token_by_hash`] and [`Store::host`], are
//! served from memory when they can ([`super::cache`]): every write to `api_tokens` or `hosts`
//! forgets what it changed once it has finished, so the next lookup reads the database again.
//! Those writes run on a task of their own ([`SqliteStore::write_cached`]) so that a caller
//! dropped mid-write (a client hanging up) cannot leave a committed change with its old row
//! cached. The control plane is the only writer of this file; entries expire after
//! [`super::cache::TTL`] whatever happens.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tomo_proto::handshake::HostFacts;
use tomo_proto::methods::Level;

use super::cache::{CAPACITY, Cache, Lookup, TTL};

/// Hosts cached at most: fewer than tokens, because a host record carries the facts its agent
/// reported (up to the 64 KiB handshake limit), so 1024 entries stay within 64 MiB at worst.
const HOST_CAPACITY: usize = 1024;
use super::{
    CodeRecord, HostRecord, NewCode, NewEvent, NewHost, RegisterError, SampleKind, SecurityEvent,
    Store, StoreError, StoredAudit, StoredEvent, TokenRecord,
};

mod actions;

/// A SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads (several at once: WAL readers never wait for the writer).
    pool: SqlitePool,
    /// Writes, one connection: SQLite takes one writer at a time, and writers racing on several
    /// connections wait for the lock by sleeping (1, 2, 5, 10 … ms), which under load (a fleet
    /// reconnecting) costs more than the writes. One connection queues them in order instead.
    writer: SqlitePool,
    /// Shared by clones, like the pools.
    cache: Arc<Caches>,
}

/// The rows every operator call reads.
#[derive(Debug)]
struct Caches {
    /// [`Store::token_by_hash`], by hash.
    tokens: Cache<[u8; 32], TokenRecord>,
    /// [`Store::host`], by id.
    hosts: Cache<String, HostRecord>,
}

/// What a write changed, to forget once it is done.
#[derive(Debug)]
enum Dirty {
    /// Token rows by id: the cache is by hash, so all of them.
    Tokens,
    Host(String),
}

impl Caches {
    fn forget(&self, dirty: &Dirty) {
        match dirty {
            Dirty::Tokens => self.tokens.clear(),
            Dirty::Host(id) => self.hosts.forget(id.as_str()),
        }
    }
}

/// Forgets on drop: when the write's task ends, normally or by a panic.
struct Forget {
    cache: Arc<Caches>,
    dirty: Dirty,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.cache.forget(&self.dirty);
    }
}

impl SqliteStore {
    /// Opens (creating with mode 0600 when missing) and migrates the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Database {
                    what: format!("creating {}", path.display()),
                    source: Box::new(e),
                })?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .after_release(|conn, _| Box::pin(writer_is_clean(conn)))
            .connect_with(opts.clone())
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database {
                what: "migrating".into(),
                source: Box::new(e),
            })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db)?;
        Ok(Self {
            pool,
            writer,
            cache: Arc::new(Caches {
                tokens: Cache::new(CAPACITY, TTL),
                hosts: Cache::new(HOST_CAPACITY, TTL),
            }),
        })
    }

    /// Runs `write`, which changes cached rows, to its end on a task of its own, then forgets
    /// `dirty`. sqlx runs a statement it has sent to SQLite even when the future awaiting it is
    /// dropped, so forgetting in the caller would be skipped by a cancelled request whose write
    /// still commits, leaving e.g. a revoked token cached as live.
    async fn write_cached<T: Send + 'static>(
        &self,
        dirty: Dirty,
        write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let forget = Forget {
            cache: Arc::clone(&self.cache),
            dirty,
        };
        let task = tokio::spawn(async move {
            let _forget = forget;
            write.await
        });
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Database {
                what: "a write's task".into(),
                source: Box::new(e),
            }),
        }
    }

    /// One statement through [`Self::write_cached`] on the writer; the rows it changed.
    async fn execute_cached(&self, dirty: Dirty, statement: Statement) -> Result<u64, StoreError> {
        let writer = self.writer.clone();
        self.write_cached(dirty, async move {
            Ok(statement
                .execute(&writer)
                .await
                .map_err(db)?
                .rows_affected())
        })
        .await
    }
}

/// Whether the writer connection may go back to the pool: outside any transaction, for SQLite
/// and for sqlx alike. When not, it is closed (which rolls back whatever is open) and the next
/// write opens a fresh one.
///
/// Issue 13.1, the root cause of writes lost on a full disk: SQLite rolls a transaction back by
/// itself when a statement in it fails with `SQLITE_FULL`; sqlx does not know, so the rollback it
/// sends when the transaction is dropped fails ("no transaction is active") and its depth stays
/// at 1. The next transaction then began with `SAVEPOINT` (sqlx's nested form), which opens a
/// transaction in SQLite; when that one failed too, sqlx's `ROLLBACK TO SAVEPOINT` left it open,
/// and every later write on the connection, answered as a success, went into a transaction that
/// was never committed, until a restart threw it away.
async fn writer_is_clean(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Executor as _, TransactionManager as _};
    if sqlx::sqlite::SqliteTransactionManager::get_transaction_depth(conn) != 0 {
        tracing::warn!("store: writer left inside a transaction; reopening it");
        return Ok(false);
    }
    // BEGIN fails inside a transaction: the probe for one sqlx does not know about.
    if conn.execute("BEGIN").await.is_err() {
        tracing::warn!("store: writer left inside a transaction; reopening it");
        return Ok(false);
    }
    conn.execute("ROLLBACK").await?;
    Ok(true)
}

/// A statement with its values bound (owned), ready to run on another task.
type Statement = sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'static>>;

/// `NotFound` when a statement meant for one row changed none.
fn found(rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// SQLite's primary result codes for a full disk and for an I/O error (extended codes keep the
/// primary one in their low byte).
const SQLITE_FULL: i64 = 13;
const SQLITE_IOERR: i64 = 10;

fn db(e: sqlx::Error) -> StoreError {
    let primary = |d: &dyn sqlx::error::DatabaseError| {
        d.code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff)
    };
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::Database(d) if primary(&*d) == Some(SQLITE_FULL) => StoreError::Full,
        sqlx::Error::Database(d) if primary(&*d) == Some(SQLITE_IOERR) => {
            StoreError::Unavailable(d.message().to_owned())
        }
        sqlx::Error::Io(e) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database {
            what: "a statement".into(),
            source: Box::new(other),
        },
    }
}

const HOST_COLUMNS: &str = "id, public_key, previous_public_key, hostname, engine_id, facts, registered_at, last_seen, removed_at, labels";
const TOKEN_COLUMNS: &str = "id, name, role, created_at, expires_at, revoked_at, host_scope, requires_approval, tool_rate_per_min, last_used_at";

fn code_row(r: &SqliteRow) -> Result<CodeRecord, StoreError> {
    let hash: Vec<u8> = r.try_get("code_hash").map_err(db)?;
    Ok(CodeRecord {
        id: super::code_record_id(&hash),
        created_at: r.try_get("created_at").map_err(db)?,
        expires_at: r.try_get("expires_at").map_err(db)?,
        created_by: r.try_get("created_by").map_err(db)?,
        used_at: r.try_get("used_at").map_err(db)?,
        used_by: r.try_get("used_by").map_err(db)?,
        revoked_at: r.try_get("revoked_at").map_err(db)?,
    })
}

fn host_row(r: &SqliteRow) -> Result<HostRecord, StoreError> {
    let facts: String = r.try_get("facts").map_err(db)?;
    let labels: String = r.try_get("labels").map_err(db)?;
    Ok(HostRecord {
        id: r.try_get("id").map_err(db)?,
        public_key: r.try_get("public_key").map_err(db)?,
        previous_public_key: r.try_get("previous_public_key").map_err(db)?,
        hostname: r.try_get("hostname").map_err(db)?,
        engine_id: r.try_get("engine_id").map_err(db)?,
        facts: serde_json::from_str(&facts).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        registered_at: r.try_get("registered_at").map_err(db)?,
        last_seen: r.try_get("last_seen").map_err(db)?,
        removed_at: r.try_get("removed_at").map_err(db)?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("host labels: {e}")))?,
    })
}

fn level_str(l: Level) -> &'static str {
    match l {
        Level::Read => "read",
        Level::Execute => "execute",
        Level::Admin => "admin",
    }
}

fn parse_level(s: &str) -> Result<Level, StoreError> {
    match s {
        "read" => Ok(Level::Read),
        "execute" => Ok(Level::Execute),
        "admin" => Ok(Level::Admin),
        other => Err(StoreError::Corrupt(format!("role {other:?}"))),
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_code(&self, c: &NewCode) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO registration_codes (code_hash, created_at, expires_at, created_by) VALUES (?, ?, ?, ?)")
            .bind(&c.code_hash[..])
            .bind(c.created_at)
            .bind(c.expires_at)
            .bind(&c.created_by)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn codes(&self, limit: u32) -> Result<Vec<CodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT code_hash, created_at, expires_at, created_by, used_at, used_by, revoked_at
             FROM registration_codes ORDER BY created_at DESC, code_hash LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(code_row).collect()
    }

    async fn revoke_code(&self, id: &str, now: i64) -> Result<CodeRecord, StoreError> {
        // An id is 16 hex digits of the hash (`code_record_id`); anything else names no code.
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound);
        }
        let prefix = id.to_ascii_uppercase();
        let mut tx = self.writer.begin().await.map_err(db)?;
        sqlx::query(
            "UPDATE registration_codes SET revoked_at = ?1
             WHERE substr(hex(code_hash), 1, 16) = ?2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&prefix)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let row = sqlx::query(
            "SELECT code_hash, created_at, expires_at, created_by, used_at, used_by, revoked_at
             FROM registration_codes WHERE substr(hex(code_hash), 1, 16) = ?",
        )
        .bind(&prefix)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        code_row(&row.ok_or(StoreError::NotFound)?)
    }

    async fn register(
        &self,
        host: &NewHost,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<HostRecord, RegisterError> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        // The first statement is the write that claims the code: SQLite serializes writers, so
        // of two racing registrations exactly one sees a row to update.
        let claimed = sqlx::query(
            "UPDATE registration_codes SET used_at = ?1, used_by = ?2
             WHERE code_hash = ?3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?1",
        )
        .bind(now)
        .bind(&host.id)
        .bind(&code_hash[..])
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if claimed == 0 {
            let row = sqlx::query(
                "SELECT expires_at, used_at, used_by, revoked_at FROM registration_codes WHERE code_hash = ?",
            )
            .bind(&code_hash[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            drop(tx);
            let Some(row) = row else {
                return Err(RegisterError::CodeUnknown);
            };
            let used_by: Option<String> = row.try_get("used_by").map_err(db)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(db)?;
            let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(db)?;
            return match used_by {
                Some(by) if by == host.id => {
                    let existing = self.host(&host.id).await?;
                    if existing.removed_at.is_some() || existing.public_key != host.public_key {
                        Err(RegisterError::CodeUsed)
                    } else {
                        Ok(existing)
                    }
                }
                Some(_) => Err(RegisterError::CodeUsed),
                None if revoked_at.is_some() => Err(RegisterError::CodeRevoked),
                None if expires_at <= now => Err(RegisterError::CodeExpired),
                None => Err(RegisterError::CodeUsed),
            };
        }
        let known: Option<Option<i64>> =
            sqlx::query_scalar("SELECT removed_at FROM hosts WHERE id = ? OR public_key = ?")
                .bind(&host.id)
                .bind(&host.public_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if let Some(removed_at) = known {
            // Rolls back the claim: the code stays usable.
            drop(tx);
            return Err(RegisterError::KnownKey {
                removed: removed_at.is_some(),
            });
        }
        let facts =
            serde_json::to_string(&host.facts).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO hosts (id, public_key, hostname, engine_id, facts, registered_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )
        .bind(&host.id)
        .bind(&host.public_key)
        .bind(&host.facts.hostname)
        .bind(&host.facts.engine_id)
        .bind(facts)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // A new row: nothing cached can be older (misses are not cached, and the id was free), so
        // a cancelled commit needs no task of its own; forgotten all the same.
        self.cache.hosts.forget(host.id.as_str());
        Ok(self.host(&host.id).await?)
    }

    async fn host(&self, id: &str) -> Result<HostRecord, StoreError> {
        let seen = match self.cache.hosts.get(id) {
            Lookup::Hit(h) => return Ok(h),
            Lookup::Miss(seen) => seen,
        };
        let q = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ?");
        let row = sqlx::query(&q)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let h = host_row(&row)?;
        self.cache.hosts.insert(seen, h.id.clone(), h.clone());
        Ok(h)
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let q = format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE removed_at IS NULL ORDER BY registered_at, id"
        );
        let rows = sqlx::query(&q).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(host_row).collect()
    }

    async fn touch_host(
        &self,
        id: &str,
        facts: Option<&HostFacts>,
        now: i64,
    ) -> Result<(), StoreError> {
        let facts = facts
            .map(|f| {
                let json =
                    serde_json::to_string(f).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok::<_, StoreError>((json, f.hostname.clone(), f.engine_id.clone()))
            })
            .transpose()?;
        let statement = match facts {
            // The engine id is bound the first time one is seen and never changed here.
            Some((json, hostname, engine_id)) => sqlx::query(
                "UPDATE hosts SET facts = ?2, hostname = ?3, engine_id = COALESCE(engine_id, ?4), last_seen = ?5
                 WHERE id = ?1",
            )
            .bind(id.to_owned())
            .bind(json)
            .bind(hostname)
            .bind(engine_id)
            .bind(now),
            None => sqlx::query("UPDATE hosts SET last_seen = ?2 WHERE id = ?1")
                .bind(id.to_owned())
                .bind(now),
        };
        self.execute_cached(Dirty::Host(id.to_owned()), statement)
            .await
            .map(drop)
    }

    async fn remove_host(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let statement =
            sqlx::query("UPDATE hosts SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL")
                .bind(id.to_owned())
                .bind(now);
        found(
            self.execute_cached(Dirty::Host(id.to_owned()), statement)
                .await?,
        )
    }

    async fn record_event(&self, e: &SecurityEvent) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO security_events (at, host_id, kind, detail) VALUES (?, ?, ?, ?)")
            .bind(e.at)
            .bind(&e.host_id)
            .bind(&e.kind)
            .bind(&e.detail)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn events(&self, host_id: &str, limit: u32) -> Result<Vec<SecurityEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, host_id, kind, detail FROM security_events WHERE host_id = ? ORDER BY at DESC, id DESC LIMIT ?",
        )
        .bind(host_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(SecurityEvent {
                    at: r.try_get("at").map_err(db)?,
                    host_id: r.try_get("host_id").map_err(db)?,
                    kind: r.try_get("kind").map_err(db)?,
                    detail: r.try_get("detail").map_err(db)?,
                })
            })
            .collect()
    }

    async fn create_token(&self, t: &TokenRecord, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, token_hash, name, role, created_at, expires_at, revoked_at, host_scope, requires_approval, tool_rate_per_min) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&token_hash[..])
        .bind(&t.name)
        .bind(level_str(t.role))
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(scope_json(&t.scope))
        .bind(t.requires_approval)
        .bind(t.tool_rate_per_min.map(i64::from))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        // A new hash: nothing cached can be older (misses are not cached), so a cancelled insert
        // needs no task of its own; forgotten all the same.
        self.cache.tokens.forget(token_hash);
        Ok(())
    }

    async fn token_by_hash(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<TokenRecord>, StoreError> {
        let seen = match self.cache.tokens.get(token_hash) {
            Lookup::Hit(t) => return Ok(Some(t)),
            Lookup::Miss(seen) => seen,
        };
        let q = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?");
        let row = sqlx::query(&q)
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let t = row.as_ref().map(token_row).transpose()?;
        // Unknown hashes are not kept: a guessing flood must not fill the cache.
        if let Some(t) = &t {
            self.cache.tokens.insert(seen, *token_hash, t.clone());
        }
        Ok(t)
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(n as u64)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let q = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        let rows = sqlx::query(&q).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(token_row).collect()
    }

    async fn token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let q = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?");
        let row = sqlx::query(&q)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        token_row(&row)
    }

    async fn revoke_token(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let statement = sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        )
        .bind(id.to_owned())
        .bind(now);
        found(self.execute_cached(Dirty::Tokens, statement).await?)
    }

    async fn touch_tokens(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let (writer, uses) = (self.writer.clone(), uses.to_vec());
        self.write_cached(Dirty::Tokens, async move {
            let mut tx = writer.begin().await.map_err(db)?;
            for (id, at) in &uses {
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = ?2
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn set_host_labels(
        &self,
        host_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let statement =
            sqlx::query("UPDATE hosts SET labels = ?2 WHERE id = ?1 AND removed_at IS NULL")
                .bind(host_id.to_owned())
                .bind(json);
        found(
            self.execute_cached(Dirty::Host(host_id.to_owned()), statement)
                .await?,
        )
    }

    async fn add_sample(
        &self,
        host_id: &str,
        kind: SampleKind,
        at: i64,
        data: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO samples (host_id, kind, at, data) VALUES (?, ?, ?, ?)")
            .bind(host_id)
            .bind(kind.as_str())
            .bind(at)
            .bind(data)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn add_samples(
        &self,
        samples: &[(String, SampleKind, i64, String)],
        seen: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        for (host_id, kind, at, data) in samples {
            sqlx::query("INSERT INTO samples (host_id, kind, at, data) VALUES (?, ?, ?, ?)")
                .bind(host_id)
                .bind(kind.as_str())
                .bind(at)
                .bind(data)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for (host_id, at) in seen {
            sqlx::query(
                "UPDATE hosts SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
            )
            .bind(host_id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let committed = tx.commit().await.map_err(db);
        // Only last-seen times changed: history, not what a check decides on. Forgotten here,
        // without a task of its own (the batch would be copied), so a cancelled commit can leave
        // an older time cached for at most the TTL. The batch writer is not cancelled anyway.
        for (host_id, _) in seen {
            self.cache.hosts.forget(host_id.as_str());
        }
        committed
    }

    async fn samples(
        &self,
        host_id: &str,
        kind: SampleKind,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, data FROM samples WHERE host_id = ? AND kind = ? ORDER BY at DESC LIMIT ?",
        )
        .bind(host_id)
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get("at").map_err(db)?, r.try_get("data").map_err(db)?)))
            .collect()
    }

    async fn prune_samples(&self, before: i64) -> Result<u64, StoreError> {
        let n = sqlx::query("DELETE FROM samples WHERE at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(n.rows_affected())
    }

    async fn add_docker_event(
        &self,
        host_id: &str,
        e: &NewEvent<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query(
            "INSERT INTO docker_events (host_id, received_at, time_nanos, event_key, event)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (host_id, event_key) DO NOTHING",
        )
        .bind(host_id)
        .bind(e.received_at)
        .bind(e.time_nanos)
        .bind(e.key)
        .bind(e.event)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok((r.rows_affected() == 1).then(|| r.last_insert_rowid()))
    }

    async fn newest_docker_event(&self, host_id: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT MAX(time_nanos) FROM docker_events WHERE host_id = ?")
            .bind(host_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn docker_events(
        &self,
        host_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = match after {
            Some(after) => sqlx::query(
                "SELECT id, received_at, event FROM docker_events
                 WHERE host_id = ? AND id > ? ORDER BY id ASC LIMIT ?",
            )
            .bind(host_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
            None => sqlx::query(
                "SELECT id, received_at, event FROM (
                     SELECT id, received_at, event FROM docker_events
                     WHERE host_id = ? ORDER BY id DESC LIMIT ?
                 ) ORDER BY id ASC",
            )
            .bind(host_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
        };
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    id: r.try_get("id").map_err(db)?,
                    received_at: r.try_get("received_at").map_err(db)?,
                    event: r.try_get("event").map_err(db)?,
                })
            })
            .collect()
    }

    async fn prune_docker_events(&self, before: i64, keep: u32) -> Result<u64, StoreError> {
        let old = sqlx::query("DELETE FROM docker_events WHERE received_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        let excess = sqlx::query(
            "DELETE FROM docker_events WHERE id IN (
                 SELECT id FROM (
                     SELECT id, ROW_NUMBER() OVER (PARTITION BY host_id ORDER BY id DESC) AS n
                     FROM docker_events
                 ) WHERE n > ?
             )",
        )
        .bind(keep)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(old.rows_affected() + excess.rows_affected())
    }

    async fn add_audit(
        &self,
        host_id: Option<&str>,
        at_ms: i64,
        received_at: i64,
        record: &str,
    ) -> Result<i64, StoreError> {
        let r = sqlx::query(
            "INSERT INTO audit (host_id, at_ms, received_at, record) VALUES (?, ?, ?, ?)",
        )
        .bind(host_id)
        .bind(at_ms)
        .bind(received_at)
        .bind(record)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(r.last_insert_rowid())
    }

    async fn add_audits(
        &self,
        records: &[(Option<String>, i64, i64, String)],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let mut ids = Vec::with_capacity(records.len());
        for (host_id, at_ms, received_at, record) in records {
            // An agent's record is itself by its text: a copy it sends again is not stored.
            let key = host_id
                .as_ref()
                .map(|_| tomo_common::hex(&tomo_common::sha256(record.as_bytes())));
            let r = sqlx::query(
                "INSERT INTO audit (host_id, at_ms, received_at, record, record_key)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (host_id, record_key) DO NOTHING",
            )
            .bind(host_id.as_deref())
            .bind(at_ms)
            .bind(received_at)
            .bind(record)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            ids.push((r.rows_affected() == 1).then(|| r.last_insert_rowid()));
        }
        tx.commit().await.map_err(db)?;
        Ok(ids)
    }

    async fn newest_agent_audit(&self, host_id: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT MAX(at_ms) FROM audit WHERE host_id = ?")
            .bind(host_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn audit(
        &self,
        host: Option<&str>,
        decision: Option<&str>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredAudit>, StoreError> {
        // `?1 IS NULL OR host_id = ?1`: one statement for one host or all; the same for the
        // decision, read from the record's JSON.
        let rows = match after {
            Some(after) => sqlx::query(
                "SELECT id, host_id, at_ms, received_at, record FROM audit
                 WHERE (?1 IS NULL OR host_id = ?1)
                   AND (?4 IS NULL OR json_extract(record, '$.decision') = ?4)
                   AND id > ?2 ORDER BY id ASC LIMIT ?3",
            )
            .bind(host)
            .bind(after)
            .bind(limit)
            .bind(decision)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
            None => sqlx::query(
                "SELECT id, host_id, at_ms, received_at, record FROM (
                     SELECT id, host_id, at_ms, received_at, record FROM audit
                     WHERE (?1 IS NULL OR host_id = ?1)
                       AND (?3 IS NULL OR json_extract(record, '$.decision') = ?3)
                     ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id ASC",
            )
            .bind(host)
            .bind(limit)
            .bind(decision)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
        };
        rows.iter()
            .map(|r| {
                Ok(StoredAudit {
                    id: r.try_get("id").map_err(db)?,
                    host_id: r.try_get("host_id").map_err(db)?,
                    at_ms: r.try_get("at_ms").map_err(db)?,
                    received_at: r.try_get("received_at").map_err(db)?,
                    record: r.try_get("record").map_err(db)?,
                })
            })
            .collect()
    }

    async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        let n = sqlx::query("DELETE FROM audit WHERE received_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(n.rows_affected())
    }

    async fn rotate_key(&self, id: &str, current: &[u8], new: &[u8]) -> Result<(), StoreError> {
        let statement = sqlx::query(
            "UPDATE hosts SET previous_public_key = public_key, public_key = ?
             WHERE id = ? AND public_key = ? AND removed_at IS NULL",
        )
        .bind(new.to_vec())
        .bind(id.to_owned())
        .bind(current.to_vec());
        let n = self
            .execute_cached(Dirty::Host(id.to_owned()), statement)
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn retire_previous_key(&self, id: &str, current: &[u8]) -> Result<(), StoreError> {
        let statement = sqlx::query(
            "UPDATE hosts SET previous_public_key = NULL WHERE id = ? AND public_key = ?",
        )
        .bind(id.to_owned())
        .bind(current.to_vec());
        self.execute_cached(Dirty::Host(id.to_owned()), statement)
            .await
            .map(drop)
    }

    async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// A token from a row with every `api_tokens` column but the hash.
fn token_row(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRecord, StoreError> {
    let role: String = r.try_get("role").map_err(db)?;
    let scope: Option<String> = r.try_get("host_scope").map_err(db)?;
    let scope = match scope {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("token host_scope: {e}")))?,
    };
    let rate: Option<i64> = r.try_get("tool_rate_per_min").map_err(db)?;
    Ok(TokenRecord {
        id: r.try_get("id").map_err(db)?,
        name: r.try_get("name").map_err(db)?,
        role: parse_level(&role)?,
        created_at: r.try_get("created_at").map_err(db)?,
        expires_at: r.try_get("expires_at").map_err(db)?,
        revoked_at: r.try_get("revoked_at").map_err(db)?,
        scope,
        requires_approval: r.try_get("requires_approval").map_err(db)?,
        tool_rate_per_min: rate
            .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt("token rate".into())))
            .transpose()?,
        last_used_at: r.try_get("last_used_at").map_err(db)?,
    })
}

/// A scope as stored: NULL for every host.
fn scope_json(scope: &[String]) -> Option<String> {
    (!scope.is_empty()).then(|| serde_json::Value::from(scope.to_vec()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("tomo.db"))
            .await
            .expect("open");
        (dir, s)
    }

    fn new_host(id: &str, key: u8) -> NewHost {
        NewHost {
            id: id.into(),
            public_key: vec![key; 32],
            facts: HostFacts {
                hostname: format!("h-{id}"),
                ..Default::default()
            },
        }
    }

    fn code(hash: u8, expires_at: i64) -> NewCode {
        NewCode {
            code_hash: [hash; 32],
            created_at: 0,
            expires_at,
            created_by: "t".into(),
        }
    }

    #[tokio::test]
    async fn codes_are_single_use_and_expire() {
        let (_d, s) = open().await;
        s.create_code(&code(1, 1000)).await.expect("create");
        s.create_code(&code(2, 1000)).await.expect("create");
        assert!(matches!(
            s.register(&new_host("a", 1), &[9; 32], 10).await,
            Err(RegisterError::CodeUnknown)
        ));
        let h = s
            .register(&new_host("a", 1), &[1; 32], 10)
            .await
            .expect("first use");
        assert_eq!(h.hostname, "h-a");
        // The same host retrying with its own code gets itself back; anyone else is refused.
        assert_eq!(
            s.register(&new_host("a", 1), &[1; 32], 11)
                .await
                .expect("retry")
                .id,
            "a"
        );
        assert!(matches!(
            s.register(&new_host("b", 2), &[1; 32], 12).await,
            Err(RegisterError::CodeUsed)
        ));
        assert!(matches!(
            s.register(&new_host("b", 2), &[2; 32], 1000).await,
            Err(RegisterError::CodeExpired)
        ));
        assert!(matches!(s.host("b").await, Err(StoreError::NotFound)));
        // A known key with a fresh code: refused, and the code stays unused.
        s.create_code(&code(3, 1000)).await.expect("create");
        assert!(matches!(
            s.register(&new_host("a", 1), &[3; 32], 20).await,
            Err(RegisterError::KnownKey { removed: false })
        ));
        assert!(s.register(&new_host("c", 3), &[3; 32], 21).await.is_ok());
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (d, _s) = open().await;
        let mode = std::fs::metadata(d.path().join("tomo.db"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[tokio::test]
    async fn engine_id_binds_once_and_removal_sticks() {
        let (_d, s) = open().await;
        s.create_code(&code(1, 1000)).await.expect("create");
        s.register(&new_host("a", 1), &[1; 32], 10)
            .await
            .expect("register");
        let mut f = HostFacts {
            hostname: "x".into(),
            engine_id: Some("E1".into()),
            ..Default::default()
        };
        s.touch_host("a", Some(&f), 20).await.expect("touch");
        f.engine_id = Some("E2".into());
        s.touch_host("a", Some(&f), 30).await.expect("touch");
        let h = s.host("a").await.expect("host");
        assert_eq!(h.engine_id.as_deref(), Some("E1"));
        assert_eq!(h.last_seen, Some(30));
        s.remove_host("a", 40).await.expect("remove");
        assert!(s.hosts().await.expect("list").is_empty());
        assert!(matches!(
            s.remove_host("a", 41).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn docker_events_are_kept_in_order_and_pruned() {
        let (_d, s) = open().await;
        for i in 0..5 {
            let event = format!("{{\"n\":{i}}}");
            let e = NewEvent {
                received_at: i,
                time_nanos: i,
                key: None,
                event: &event,
            };
            s.add_docker_event("h1", &e).await.expect("add");
        }
        let newest = s.docker_events("h1", None, 2).await.expect("newest");
        assert_eq!(newest.len(), 2);
        assert!(newest[0].id < newest[1].id);
        assert_eq!(newest[1].event, r#"{"n":4}"#);
        let after = s
            .docker_events("h1", Some(newest[0].id), 10)
            .await
            .expect("after");
        assert_eq!(after.len(), 1);
        // Older than 1 ms goes (1 row), then only the newest 2 stay.
        assert_eq!(s.prune_docker_events(1, 2).await.expect("prune"), 3);
        let left = s.docker_events("h1", None, 10).await.expect("left");
        assert_eq!(
            left.iter().map(|e| e.received_at).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    /// Issue 13.4: a replayed event (same key) is stored once; the newest engine time is where
    /// the next replay starts, per host.
    #[tokio::test]
    async fn a_replayed_event_is_stored_once() {
        let (_d, s) = open().await;
        assert_eq!(s.newest_docker_event("h1").await.expect("none"), None);
        let e = |t: i64, key: &'static str| NewEvent {
            received_at: 1,
            time_nanos: t,
            key: Some(key),
            event: "{}",
        };
        let first = s.add_docker_event("h1", &e(5, "5:container:start:a")).await;
        assert!(first.expect("first").is_some());
        let again = s.add_docker_event("h1", &e(5, "5:container:start:a")).await;
        assert_eq!(again.expect("copy"), None, "a copy is not stored");
        let other_host = s.add_docker_event("h2", &e(9, "5:container:start:a")).await;
        assert!(other_host.expect("h2").is_some(), "keys are per host");
        s.add_docker_event("h1", &e(7, "7:container:die:a"))
            .await
            .expect("later");
        assert_eq!(
            s.docker_events("h1", None, 10).await.expect("list").len(),
            2
        );
        assert_eq!(s.newest_docker_event("h1").await.expect("h1"), Some(7));
        assert_eq!(s.newest_docker_event("h2").await.expect("h2"), Some(9));
    }

    /// Issue 14: `StoreError::Database` dropped the error it came from; it keeps it as its
    /// source, and its text says what failed.
    #[tokio::test]
    async fn a_database_error_keeps_its_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SqliteStore::open(&dir.path().join("missing/tomo.db"))
            .await
            .expect_err("no such directory");
        assert!(matches!(e, StoreError::Database { .. }), "{e:?}");
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.is::<std::io::Error>(), "{source:?}");
        assert!(e.to_string().contains("missing/tomo.db"), "{e}");
    }

    /// Issue 13 (double fault): an agent sends its log again at each session start; a copy of
    /// a record already stored is not stored again; operator records (no host) never collide.
    #[tokio::test]
    async fn an_agents_audit_copy_is_stored_once() {
        let (_d, s) = open().await;
        let row = |host: Option<&str>, at: i64, text: &str| {
            (host.map(str::to_owned), at, 1, text.to_owned())
        };
        let first = s
            .add_audits(&[row(Some("h1"), 5, "{\"a\":1}"), row(None, 5, "{\"op\":1}")])
            .await
            .expect("first");
        assert!(first.iter().all(Option::is_some));
        let again = s
            .add_audits(&[
                row(Some("h1"), 5, "{\"a\":1}"),
                row(None, 5, "{\"op\":1}"),
                row(Some("h2"), 7, "{\"a\":1}"),
            ])
            .await
            .expect("again");
        assert_eq!(again[0], None, "a copy of h1's record");
        assert!(
            again[1].is_some(),
            "operator records are never dropped as copies"
        );
        assert!(again[2].is_some(), "another host's record");
        assert_eq!(s.newest_agent_audit("h1").await.expect("h1"), Some(5));
        assert_eq!(s.newest_agent_audit("h3").await.expect("h3"), None);
    }

    #[tokio::test]
    async fn audit_records_by_host_after_and_pruned() {
        let (_d, s) = open().await;
        let a1 = s
            .add_audit(Some("h1"), 1, 10, "{\"n\":1}")
            .await
            .expect("add");
        let op = s.add_audit(None, 2, 20, "{\"n\":2}").await.expect("add");
        let a3 = s
            .add_audit(Some("h1"), 3, 30, "{\"n\":3,\"decision\":\"denied\"}")
            .await
            .expect("add");
        s.add_audit(Some("h2"), 4, 40, "{\"n\":4}")
            .await
            .expect("add");
        assert!(a1 < op && op < a3);
        let ids = |v: Vec<StoredAudit>| v.iter().map(|r| r.id).collect::<Vec<_>>();
        // All hosts and operator actions, oldest first; the newest `limit` without `after`.
        let all = s.audit(None, None, None, 10).await.expect("all");
        assert_eq!(all.len(), 4);
        // By decision, with or without `after`.
        assert_eq!(
            ids(s
                .audit(None, Some("denied"), None, 10)
                .await
                .expect("denied")),
            vec![a3]
        );
        assert_eq!(
            ids(s
                .audit(None, Some("denied"), Some(a3), 10)
                .await
                .expect("none")),
            Vec::<i64>::new()
        );
        assert_eq!(all[1].host_id, None);
        assert_eq!(all[1].record, "{\"n\":2}");
        assert_eq!((all[2].at_ms, all[2].received_at), (3, 30));
        assert_eq!(
            ids(s.audit(None, None, None, 2).await.expect("newest"))[0],
            a3
        );
        assert_eq!(
            ids(s.audit(Some("h1"), None, None, 10).await.expect("h1")),
            vec![a1, a3]
        );
        assert_eq!(
            ids(s
                .audit(Some("h1"), None, Some(a1), 10)
                .await
                .expect("after")),
            vec![a3]
        );
        assert_eq!(
            s.audit(None, None, Some(op), 1)
                .await
                .expect("after, limited")[0]
                .id,
            a3
        );
        assert!(
            s.audit(Some("h3"), None, None, 10)
                .await
                .expect("none")
                .is_empty()
        );
        // Pruned by the control plane's clock (received_at), whatever the recorder said.
        assert_eq!(s.prune_audit(30).await.expect("prune"), 2);
        assert_eq!(s.audit(None, None, None, 10).await.expect("left").len(), 2);
    }

    fn token(id: &str, scope: &[&str]) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: format!("n-{id}"),
            role: Level::Execute,
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            requires_approval: true,
            tool_rate_per_min: Some(30),
            last_used_at: None,
        }
    }

    /// A small tmpfs this test mounts itself (root only), unmounted on drop: a disk that fills.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        /// `None` (said on stderr) when mounting is not allowed here, except under CI.
        fn mount(size: &str) -> Option<Self> {
            let dir = tempfile::tempdir().expect("tempdir");
            let ok = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(Self(dir));
            }
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs root to mount a tmpfs for the disk-full tests"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
            None
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        /// Fills the file system with `filler`: every later write to it fails with ENOSPC.
        fn fill(&self) -> std::path::PathBuf {
            use std::io::Write as _;
            let filler = self.path().join("filler");
            let mut f = std::fs::File::create(&filler).expect("filler");
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            // A few bytes at a time to the very last block.
            while f.write_all(&chunk[..512]).is_ok() {}
            filler
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// Issue 13.1: after one write failed on a full disk, every later write answered success
    /// and was never stored, even after space came back, until a restart. Each write must
    /// fail while the disk is full, and succeed and be stored once space is freed.
    #[tokio::test]
    async fn a_full_disk_fails_writes_and_the_store_recovers_when_space_returns() {
        let Some(fs) = Tmpfs::mount("2m") else { return };
        let s = SqliteStore::open(&fs.path().join("tomo.db"))
            .await
            .expect("open");
        s.create_token(&token("before", &[]), &[1; 32])
            .await
            .expect("room left");
        let filler = fs.fill();
        // Big rows, so each needs new pages: none of these can be stored.
        let big = "x".repeat(256 * 1024);
        let mut failed = 0;
        for n in 0..8 {
            // As the audit recorder writes: batches, in one transaction each.
            let batch = vec![(None, n, n, big.clone()), (None, n, n, big.clone())];
            if s.add_audits(&batch).await.is_err() {
                failed += 1;
            }
            if s.add_audit(None, n, n, &big).await.is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "a write on a full disk must fail");
        // Whatever happened before, a write either fails or is stored: never a silent loss.
        let mut t = token("during", &[]);
        t.name = "y".repeat(512 * 1024);
        match s.create_token(&t, &[2; 32]).await {
            Ok(()) => assert!(s.token("during").await.is_ok(), "acknowledged, so stored"),
            Err(e) => assert!(matches!(e, StoreError::Full), "a full disk says so: {e:?}"),
        }
        std::fs::remove_file(&filler).expect("free space");
        s.create_token(&token("after", &[]), &[3; 32])
            .await
            .expect("writes work again once space returns");
        s.add_audit(None, 99, 99, "{\"n\":99}")
            .await
            .expect("audit after");
        // Stored for real: a fresh connection (a restarted control plane) sees them.
        s.close().await;
        let again = SqliteStore::open(&fs.path().join("tomo.db"))
            .await
            .expect("reopen");
        for id in ["before", "after"] {
            assert!(again.token(id).await.is_ok(), "{id} is stored");
        }
        assert_eq!(
            again
                .audit(None, None, None, 100)
                .await
                .expect("audit")
                .iter()
                .filter(|a| a.at_ms == 99)
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn tokens_are_listed_revoked_and_touched() {
        let (_d, s) = open().await;
        s.create_token(&token("a", &[]), &[1; 32])
            .await
            .expect("create");
        s.create_token(&token("b", &["h1", "env=prod"]), &[2; 32])
            .await
            .expect("create");
        let all = s.list_tokens().await.expect("list");
        assert_eq!(all, vec![token("a", &[]), token("b", &["h1", "env=prod"])]);
        assert!(matches!(
            s.revoke_token("zzz", 5).await,
            Err(StoreError::NotFound)
        ));
        s.revoke_token("b", 5).await.expect("revoke");
        s.revoke_token("b", 9).await.expect("again");
        assert_eq!(s.token("b").await.expect("b").revoked_at, Some(5));
        assert!(matches!(s.token("zzz").await, Err(StoreError::NotFound)));
        // Last use only moves forward; unknown ids are ignored.
        s.touch_tokens(&[("a".into(), 50), ("zzz".into(), 50)])
            .await
            .expect("touch");
        s.touch_tokens(&[("a".into(), 40)]).await.expect("touch");
        let a = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(a.last_used_at, Some(50));
    }

    #[tokio::test]
    async fn host_labels_are_replaced_and_read_back() {
        let (_d, s) = open().await;
        s.create_code(&code(1, 1000)).await.expect("create");
        let h = s
            .register(&new_host("a", 1), &[1; 32], 10)
            .await
            .expect("register");
        assert!(h.labels.is_empty());
        let labels: BTreeMap<String, String> = [("env".to_owned(), "prod".to_owned())]
            .into_iter()
            .collect();
        s.set_host_labels("a", &labels).await.expect("set");
        assert_eq!(s.host("a").await.expect("host").labels, labels);
        assert_eq!(s.hosts().await.expect("hosts")[0].labels, labels);
        assert!(matches!(
            s.set_host_labels("nope", &labels).await,
            Err(StoreError::NotFound)
        ));
        s.remove_host("a", 20).await.expect("remove");
        assert!(matches!(
            s.set_host_labels("a", &labels).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn samples_and_last_seen_are_stored_in_one_batch() {
        let (_d, s) = open().await;
        s.create_code(&code(1, 1000)).await.expect("code");
        s.register(&new_host("h", 1), &[1; 32], 10)
            .await
            .expect("register");
        let batch = [
            (
                "h".to_owned(),
                SampleKind::Metrics,
                20,
                r#"{"a":1}"#.to_owned(),
            ),
            ("h".to_owned(), SampleKind::Health, 21, "{}".to_owned()),
        ];
        // The latest time wins, whatever the order; an unknown host changes nothing.
        let seen = [
            ("h".to_owned(), 30),
            ("h".to_owned(), 25),
            ("x".to_owned(), 40),
        ];
        s.add_samples(&batch, &seen).await.expect("batch");
        assert_eq!(
            s.samples("h", SampleKind::Metrics, 10).await.expect("list"),
            vec![(20, r#"{"a":1}"#.to_owned())]
        );
        assert_eq!(
            s.samples("h", SampleKind::Health, 10).await.expect("list"),
            vec![(21, "{}".to_owned())]
        );
        assert_eq!(s.host("h").await.expect("host").last_seen, Some(30));
    }

    #[tokio::test]
    async fn a_cached_token_is_seen_revoked_on_the_next_lookup() {
        let (_d, s) = open().await;
        s.create_token(&token("a", &[]), &[1; 32])
            .await
            .expect("create");
        let live = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(live.revoked_at, None);
        assert_eq!(
            s.token_by_hash(&[1; 32]).await.expect("a"),
            Some(live),
            "cached"
        );
        assert_eq!(s.cache.tokens.stats(), (1, 1));
        s.revoke_token("a", 5).await.expect("revoke");
        let revoked = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(revoked.revoked_at, Some(5));
        // Last use written by the store is read back too.
        s.touch_tokens(&[("a".into(), 50)]).await.expect("touch");
        let t = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!((t.revoked_at, t.last_used_at), (Some(5), Some(50)));
        // Unknown hashes are never kept.
        assert_eq!(s.token_by_hash(&[2; 32]).await.expect("b"), None);
        s.create_token(&token("b", &[]), &[2; 32])
            .await
            .expect("create");
        assert!(s.token_by_hash(&[2; 32]).await.expect("b").is_some());
    }

    #[tokio::test]
    async fn a_cached_host_is_seen_changed_on_the_next_lookup() {
        let (_d, s) = open().await;
        s.create_code(&code(1, 1000)).await.expect("code");
        s.register(&new_host("a", 1), &[1; 32], 10)
            .await
            .expect("register");
        let before = s.host("a").await.expect("host");
        assert_eq!(s.host("a").await.expect("host"), before, "cached");
        let (hits, _) = s.cache.hosts.stats();
        assert!(hits >= 1, "hits {hits}");
        let labels: BTreeMap<String, String> = [("env".to_owned(), "prod".to_owned())]
            .into_iter()
            .collect();
        s.set_host_labels("a", &labels).await.expect("labels");
        assert_eq!(s.host("a").await.expect("host").labels, labels);
        s.rotate_key("a", &[1; 32], &[2; 32]).await.expect("rotate");
        let h = s.host("a").await.expect("host");
        assert_eq!(
            (h.public_key, h.previous_public_key),
            (vec![2; 32], Some(vec![1; 32]))
        );
        s.retire_previous_key("a", &[2; 32]).await.expect("retire");
        assert_eq!(s.host("a").await.expect("host").previous_public_key, None);
        let facts = HostFacts {
            hostname: "renamed".into(),
            engine_id: Some("E1".into()),
            ..Default::default()
        };
        s.touch_host("a", Some(&facts), 20).await.expect("touch");
        let h = s.host("a").await.expect("host");
        assert_eq!(
            (h.hostname.as_str(), h.engine_id.as_deref(), h.last_seen),
            ("renamed", Some("E1"), Some(20))
        );
        s.touch_host("a", None, 25).await.expect("touch");
        assert_eq!(s.host("a").await.expect("host").last_seen, Some(25));
        s.add_samples(&[], &[("a".into(), 30)]).await.expect("seen");
        assert_eq!(s.host("a").await.expect("host").last_seen, Some(30));
        s.remove_host("a", 40).await.expect("remove");
        assert_eq!(s.host("a").await.expect("host").removed_at, Some(40));
    }

    /// The hits are served from memory: a row deleted behind the store's back (which the control
    /// plane never does) is still returned until a write of the store forgets it.
    #[tokio::test]
    async fn lookups_are_served_from_the_cache() {
        let (_d, s) = open().await;
        s.create_token(&token("a", &[]), &[1; 32])
            .await
            .expect("create");
        s.create_code(&code(1, 1000)).await.expect("code");
        s.register(&new_host("h", 1), &[1; 32], 10)
            .await
            .expect("register");
        assert!(s.token_by_hash(&[1; 32]).await.expect("a").is_some());
        s.host("h").await.expect("host");
        sqlx::query("DELETE FROM api_tokens")
            .execute(&s.writer)
            .await
            .expect("delete");
        sqlx::query("DELETE FROM hosts")
            .execute(&s.writer)
            .await
            .expect("delete");
        assert!(s.token_by_hash(&[1; 32]).await.expect("a").is_some());
        assert_eq!(s.host("h").await.expect("host").id, "h");
        // A clone shares the cache.
        assert_eq!(s.clone().host("h").await.expect("host").id, "h");
        // Any write of the table forgets.
        assert!(matches!(
            s.revoke_token("a", 5).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.token_by_hash(&[1; 32]).await.expect("a"), None);
        assert!(matches!(
            s.remove_host("h", 5).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(s.host("h").await, Err(StoreError::NotFound)));
    }

    /// A reader that queried before a revocation committed and inserts after it was forgotten:
    /// its old row is dropped, the next lookup reads the revocation.
    #[tokio::test]
    async fn a_row_read_before_a_revocation_is_not_cached_after_it() {
        let (_d, s) = open().await;
        s.create_token(&token("a", &[]), &[1; 32])
            .await
            .expect("create");
        let Lookup::Miss(seen) = s.cache.tokens.get(&[1; 32]) else {
            panic!("cached before any lookup");
        };
        let old = s.token("a").await.expect("a");
        s.revoke_token("a", 5).await.expect("revoke");
        s.cache.tokens.insert(seen, [1; 32], old);
        let t = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(t.revoked_at, Some(5));
    }

    /// A request dropped while its revocation is in flight: the write still commits (sqlx runs
    /// what it has sent), and the cache must not keep the live token past it, even when it was
    /// read again between the drop and the commit.
    #[tokio::test]
    async fn a_cancelled_revocation_that_commits_is_not_served_stale() {
        let (_d, s) = open().await;
        s.create_token(&token("a", &[]), &[1; 32])
            .await
            .expect("create");
        assert!(s.token_by_hash(&[1; 32]).await.expect("a").is_some());
        // Another connection holds the write lock: the UPDATE, once sent, waits in SQLite.
        let mut blocker = s.pool.acquire().await.expect("acquire");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .expect("lock");
        let dropped =
            tokio::time::timeout(Duration::from_millis(200), s.revoke_token("a", 5)).await;
        assert!(dropped.is_err(), "the revocation finished: {dropped:?}");
        let t = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(t.revoked_at, None, "not committed yet");
        sqlx::query("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .expect("unlock");
        drop(blocker);
        for _ in 0..200 {
            if s.token("a").await.expect("a").revoked_at.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.token("a").await.expect("a").revoked_at, Some(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = s.token_by_hash(&[1; 32]).await.expect("a").expect("some");
        assert_eq!(t.revoked_at, Some(5));
    }

    #[tokio::test]
    async fn samples_are_pruned() {
        let (_d, s) = open().await;
        for at in [1, 2, 3] {
            s.add_sample("a", SampleKind::Metrics, at, "{}")
                .await
                .expect("add");
        }
        assert_eq!(s.prune_samples(3).await.expect("prune"), 2);
        assert_eq!(
            s.samples("a", SampleKind::Metrics, 10).await.expect("list"),
            vec![(3, "{}".to_owned())]
        );
    }
}
