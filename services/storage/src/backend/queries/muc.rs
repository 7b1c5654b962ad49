//! Persistent multi-user chat rooms (XEP-0045): one row per room and one
//! per affiliation, written whole in one transaction.

use sqlx::{Pool, Row};

use super::{Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::RoomAddress;
use starling_api::{MucAffiliation, MucRoomRecord};
use starling_jid::BareJid;

/// The stored room with its affiliations (by JID).
pub(crate) async fn muc_room(
    pool: &Pool<Db>,
    room: &RoomAddress<'_>,
    jid: &BareJid,
) -> Result<Option<MucRoomRecord>, StorageError> {
    let mut transaction = pool.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT revision, name, public, config, subject, subject_nick, occupant_id_salt \
         FROM muc_rooms WHERE service = $1 AND localpart = $2",
    )
    .bind(room.service)
    .bind(room.localpart)
    .fetch_optional(&mut *transaction)
    .await?
    else {
        return Ok(None);
    };
    let affiliations = sqlx::query(
        "SELECT jid, affiliation, reason FROM muc_affiliations \
         WHERE service = $1 AND localpart = $2 ORDER BY jid",
    )
    .bind(room.service)
    .bind(room.localpart)
    .fetch_all(&mut *transaction)
    .await?
    .iter()
    .map(|row| {
        Ok(MucAffiliation {
            jid: row.try_get(0)?,
            affiliation: row.try_get(1)?,
            reason: row.try_get(2)?,
        })
    })
    .collect::<Result<Vec<_>, StorageError>>()?;
    transaction.commit().await?;
    let public: i64 = row.try_get(2)?;
    Ok(Some(MucRoomRecord {
        jid: jid.clone(),
        revision: row.try_get(0)?,
        name: row.try_get(1)?,
        public: public != 0,
        config: row.try_get(3)?,
        subject: row.try_get(4)?,
        subject_nick: row.try_get(5)?,
        occupant_id_salt: row.try_get(6)?,
        affiliations,
    }))
}

/// Insert or replace the room (only by a higher revision) and, when it
/// was written, its affiliations; returns whether it was written.
pub(crate) async fn put_muc_room(
    pool: &Pool<Db>,
    room: &RoomAddress<'_>,
    record: &MucRoomRecord,
) -> Result<bool, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let written = sqlx::query(
        "INSERT INTO muc_rooms (service, localpart, revision, name, public, config, subject, subject_nick, occupant_id_salt) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (service, localpart) DO UPDATE SET revision = excluded.revision, \
         name = excluded.name, public = excluded.public, config = excluded.config, \
         subject = excluded.subject, subject_nick = excluded.subject_nick, \
         occupant_id_salt = excluded.occupant_id_salt \
         WHERE muc_rooms.revision < excluded.revision",
    )
    .bind(room.service)
    .bind(room.localpart)
    .bind(record.revision)
    .bind(&record.name)
    .bind(i64::from(record.public))
    .bind(&record.config)
    .bind(&record.subject)
    .bind(&record.subject_nick)
    .bind(&record.occupant_id_salt)
    .execute(&mut *transaction)
    .await?
    .rows_affected()
        > 0;
    if !written {
        transaction.rollback().await?;
        return Ok(false);
    }
    sqlx::query("DELETE FROM muc_affiliations WHERE service = $1 AND localpart = $2")
        .bind(room.service)
        .bind(room.localpart)
        .execute(&mut *transaction)
        .await?;
    for affiliation in &record.affiliations {
        sqlx::query(
            "INSERT INTO muc_affiliations (service, localpart, jid, affiliation, reason) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(room.service)
        .bind(room.localpart)
        .bind(&affiliation.jid)
        .bind(&affiliation.affiliation)
        .bind(affiliation.reason.as_deref())
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(true)
}

/// Remove the room (its affiliations go with it); whether it existed.
pub(crate) async fn remove_muc_room(
    pool: &Pool<Db>,
    room: &RoomAddress<'_>,
) -> Result<bool, StorageError> {
    let removed = sqlx::query("DELETE FROM muc_rooms WHERE service = $1 AND localpart = $2")
        .bind(room.service)
        .bind(room.localpart)
        .execute(pool)
        .await?;
    Ok(removed.rows_affected() > 0)
}

/// The public rooms of a service, by localpart, at most `limit`.
pub(crate) async fn listed_muc_rooms(
    pool: &Pool<Db>,
    service: &str,
    limit: i64,
) -> Result<Vec<(String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT localpart, name FROM muc_rooms WHERE service = $1 AND public <> 0 \
         ORDER BY localpart LIMIT $2",
    )
    .bind(service)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
