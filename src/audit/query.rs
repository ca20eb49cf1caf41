//! The admin API's questions to the audit log: filters and cursor paging for
//! `/admin/audit/requests` and `/admin/audit/activity`, daily totals for `/admin/usage`,
//! parsed from the query string, answered by PostgreSQL or (without a database) by a scan of
//! the local journal, and rendered the same way for both.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::record::{ActivityEntry, AuditRecord, RequestEntry};
use super::seen::SeenIds;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{reason}")]
    Invalid { param: &'static str, reason: String },
    #[error("the audit log cannot be read right now; retry shortly")]
    Unavailable,
}

/// Which records a listing returns.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub user_id: Option<Uuid>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
    pub action: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

/// Newest first; `after` is the `last_id` of the previous page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: usize,
    pub after: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Key,
    Model,
}

impl GroupBy {
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::User => "user_id",
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    pub since_us: i64,
    pub until_us: i64,
}

/// One day's totals for one group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageRow {
    pub day: String,
    pub group: Option<String>,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

fn invalid(param: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError::Invalid {
        param,
        reason: reason.into(),
    }
}

/// RFC 3339, a date (`2026-11-28`, midnight UTC) or Unix seconds.
fn time(param: &'static str, v: &str) -> Result<i64, QueryError> {
    let us = parse_time(v).ok_or_else(|| {
        invalid(
            param,
            format!("{param} must be an RFC 3339 time, a date (YYYY-MM-DD) or Unix seconds"),
        )
    })?;
    // Answers echo the range back as RFC 3339, which stops at year 9999 (and chrono earlier
    // still: a time past it would come back as 1970).
    let year = DateTime::<Utc>::from_timestamp_micros(us).map(|t| t.year());
    if !year.is_some_and(|y| (0..=9999).contains(&y)) {
        return Err(invalid(
            param,
            format!("{param} must fall between the years 0 and 9999"),
        ));
    }
    Ok(us)
}

fn parse_time(v: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_micros());
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
    }
    v.parse::<i64>().ok()?.checked_mul(1_000_000)
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Parses a listing's query string; unknown parameters are refused so a typo in a filter
/// never silently returns everything.
pub fn parse_list(query: Option<&str>, activity: bool) -> Result<(Filter, Page), QueryError> {
    let mut f = Filter::default();
    let mut page = Page {
        limit: DEFAULT_LIMIT,
        after: None,
    };
    for (k, v) in pairs(query) {
        match k.as_str() {
            "user_id" => {
                f.user_id = Some(
                    Uuid::parse_str(&v)
                        .map_err(|_| invalid("user_id", "user_id must be a UUID"))?,
                )
            }
            "key_id" => f.key_id = Some(v),
            "model" if !activity => f.model = Some(v),
            "status" if !activity => {
                f.status = Some(
                    v.parse()
                        .ok()
                        .filter(|s| (100..600).contains(s))
                        .ok_or_else(|| invalid("status", "status must be an HTTP status code"))?,
                )
            }
            "action" if activity => f.action = Some(v),
            "since" => f.since_us = Some(time("since", &v)?),
            "until" => f.until_us = Some(time("until", &v)?),
            "limit" => {
                page.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        invalid("limit", format!("limit must be between 1 and {MAX_LIMIT}"))
                    })?
            }
            "after" => {
                page.after = Some(
                    Uuid::parse_str(&v)
                        .map_err(|_| invalid("after", "after must be the last_id of a page"))?,
                )
            }
            _ => {
                return Err(QueryError::Invalid {
                    param: "query",
                    reason: format!("unknown query parameter {k:?}"),
                })
            }
        }
    }
    Ok((f, page))
}

pub fn parse_usage(query: Option<&str>, now_us: i64) -> Result<UsageQuery, QueryError> {
    let mut group_by = None;
    let (mut since, mut until) = (None, None);
    for (k, v) in pairs(query) {
        match k.as_str() {
            "group_by" => {
                group_by = Some(match v.as_str() {
                    "user" => GroupBy::User,
                    "key" => GroupBy::Key,
                    "model" => GroupBy::Model,
                    _ => return Err(invalid("group_by", "group_by must be user, key or model")),
                })
            }
            "since" => since = Some(time("since", &v)?),
            "until" => until = Some(time("until", &v)?),
            _ => {
                return Err(QueryError::Invalid {
                    param: "query",
                    reason: format!("unknown query parameter {k:?}"),
                })
            }
        }
    }
    let until_us = until.unwrap_or(now_us);
    // Thirty days by default, like most usage dashboards.
    let since_us = since.unwrap_or(until_us.saturating_sub(30 * 86_400 * 1_000_000));
    if since_us > until_us {
        return Err(invalid("since", "since must not be after until"));
    }
    Ok(UsageQuery {
        group_by: group_by.unwrap_or(GroupBy::Model),
        since_us,
        until_us,
    })
}

pub fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn day(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

pub fn request_json(r: &RequestEntry) -> Value {
    let mut v = json!({
        "id": r.id,
        "object": "audit.request",
        "created_at": rfc3339(r.ts_us),
        "request_id": r.request_id,
        "user_id": r.user_id,
        "key_id": r.key_id,
        "client_addr": r.client_addr,
        "method": r.method,
        "endpoint": r.endpoint,
        "model": r.model,
        "backend": r.backend,
        "stream": r.stream,
        "status": r.status,
        "error_type": r.error_type,
        "attempts": r.attempts,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
    });
    if let Some(b) = &r.request_body {
        v["request_body"] = Value::String(b.clone());
    }
    if let Some(b) = &r.response_body {
        v["response_body"] = Value::String(b.clone());
    }
    v
}

pub fn activity_json(a: &ActivityEntry) -> Value {
    json!({
        "id": a.id,
        "object": "audit.activity",
        "created_at": rfc3339(a.ts_us),
        "action": a.action,
        "outcome": a.outcome,
        "actor_user_id": a.actor_user_id,
        "actor_key_id": a.actor_key_id,
        "target": a.target,
        "client_addr": a.client_addr,
        "request_id": a.request_id,
        "detail": a.detail,
    })
}

/// `{object: "list", data, has_more, last_id}` from up to `limit + 1` rows.
pub fn list_json(mut rows: Vec<(Uuid, Value)>, limit: usize) -> Value {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let last_id = rows.last().map(|(id, _)| id.to_string());
    json!({
        "object": "list",
        "data": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": Value::Null,
        "last_id": last_id,
    })
}

pub fn usage_json(q: &UsageQuery, rows: &[UsageRow]) -> Value {
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "object": "audit.usage",
                "date": r.day,
                "requests": r.requests,
                "errors": r.errors,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
            });
            v[q.group_by.column()] = json!(r.group);
            v
        })
        .collect();
    json!({
        "object": "list",
        "group_by": match q.group_by { GroupBy::User => "user", GroupBy::Key => "key", GroupBy::Model => "model" },
        "since": rfc3339(q.since_us),
        "until": rfc3339(q.until_us),
        "data": data,
    })
}

// --- answering from a scan (the journal) ---

fn in_window(f: &Filter, ts: i64) -> bool {
    f.since_us.is_none_or(|s| ts >= s) && f.until_us.is_none_or(|u| ts < u)
}

fn request_matches(f: &Filter, r: &RequestEntry) -> bool {
    in_window(f, r.ts_us)
        && f.user_id.is_none_or(|u| r.user_id == Some(u))
        && f.key_id
            .as_ref()
            .is_none_or(|k| r.key_id.as_ref() == Some(k))
        && f.model.as_ref().is_none_or(|m| r.model.as_ref() == Some(m))
        && f.status.is_none_or(|s| r.status == s)
}

fn activity_matches(f: &Filter, a: &ActivityEntry) -> bool {
    in_window(f, a.ts_us)
        && f.user_id.is_none_or(|u| a.actor_user_id == Some(u))
        && f.key_id
            .as_ref()
            .is_none_or(|k| a.actor_key_id.as_ref() == Some(k))
        && f.action.as_ref().is_none_or(|x| &a.action == x)
}

/// Reads the whole journal, handing each record to the visitor.
pub type Scan<'a> = &'a (dyn Fn(&mut dyn FnMut(AuditRecord)) -> Result<(), QueryError> + Sync);

/// A row kept for a page, ordered by (time, id) only.
struct Keyed {
    key: (i64, Uuid),
    row: Value,
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// Newest first, one row per id, older than the `after` record; `limit + 1` rows at most.
/// Two passes over the journal (the cursor's place, then the page), each holding at most
/// a page: memory is bounded by `limit`, not by the journal.
fn page_of<E>(
    scan: Scan<'_>,
    page: Page,
    matching: impl Fn(&AuditRecord) -> Option<((i64, Uuid), &E)>,
    to_json: impl Fn(&E) -> Value,
) -> Result<Value, QueryError> {
    let below = match page.after {
        None => None,
        Some(after) => {
            let mut found = None;
            scan(&mut |r| {
                if let Some((key, _)) = matching(&r).filter(|(k, _)| k.1 == after) {
                    found = Some(key);
                }
            })?;
            Some(found.ok_or_else(|| invalid("after", "after is not the id of a record"))?)
        }
    };
    let keep = page.limit + 1;
    let mut heap: BinaryHeap<Reverse<Keyed>> = BinaryHeap::with_capacity(keep + 1);
    let mut ids: HashSet<Uuid> = HashSet::with_capacity(keep + 1);
    scan(&mut |r| {
        let Some((key, entry)) = matching(&r) else {
            return;
        };
        if below.is_some_and(|b| key >= b) || ids.contains(&key.1) {
            return;
        }
        if heap.len() == keep && heap.peek().is_some_and(|Reverse(min)| key <= min.key) {
            return;
        }
        ids.insert(key.1);
        heap.push(Reverse(Keyed {
            key,
            row: to_json(entry),
        }));
        if heap.len() > keep {
            if let Some(Reverse(dropped)) = heap.pop() {
                ids.remove(&dropped.key.1);
            }
        }
    })?;
    let rows = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse(k)| (k.key.1, k.row))
        .collect();
    Ok(list_json(rows, page.limit))
}

pub fn scan_requests(scan: Scan<'_>, f: &Filter, page: Page) -> Result<Value, QueryError> {
    page_of(
        scan,
        page,
        |r| match r {
            AuditRecord::Request(r) if request_matches(f, r) => Some(((r.ts_us, r.id), r)),
            _ => None,
        },
        request_json,
    )
}

pub fn scan_activity(scan: Scan<'_>, f: &Filter, page: Page) -> Result<Value, QueryError> {
    page_of(
        scan,
        page,
        |r| match r {
            AuditRecord::Activity(a) if activity_matches(f, a) => Some(((a.ts_us, a.id), a)),
            _ => None,
        },
        activity_json,
    )
}

/// Daily totals per group. A journal can hold a record twice: a batch written again after
/// a failed write or sync (right after itself, or, replayed from the spool, much later).
/// The first pass sums every copy and notes the ids it (probably) met before; when there
/// are any, a second pass subtracts each extra copy. Exact, at two to four bytes per record.
pub fn scan_usage(scan: Scan<'_>, q: &UsageQuery) -> Result<Vec<UsageRow>, QueryError> {
    let counted = |r: &RequestEntry| {
        // Usage is about model requests (not model listings or admin calls).
        r.model.is_some() && r.ts_us >= q.since_us && r.ts_us < q.until_us
    };
    let mut sums: BTreeMap<(String, Option<String>), UsageRow> = BTreeMap::new();
    let mut seen = SeenIds::new();
    let mut maybe_repeated: HashSet<Uuid> = HashSet::new();
    scan(&mut |r| {
        let AuditRecord::Request(r) = r else { return };
        if counted(&r) {
            add(&mut sums, q.group_by, &r, 1);
            if !seen.insert(r.id) {
                maybe_repeated.insert(r.id);
            }
        }
    })?;
    if !maybe_repeated.is_empty() {
        let mut first = HashSet::new();
        scan(&mut |r| {
            let AuditRecord::Request(r) = r else { return };
            if counted(&r) && maybe_repeated.contains(&r.id) && !first.insert(r.id) {
                add(&mut sums, q.group_by, &r, -1);
            }
        })?;
    }
    Ok(sums.into_values().collect())
}

/// Adds (`sign` 1) or takes away (-1) one record's share of its day and group.
fn add(
    sums: &mut BTreeMap<(String, Option<String>), UsageRow>,
    group_by: GroupBy,
    r: &RequestEntry,
    sign: i64,
) {
    let group = match group_by {
        GroupBy::User => r.user_id.map(|u| u.to_string()),
        GroupBy::Key => r.key_id.clone(),
        GroupBy::Model => r.model.clone(),
    };
    let d = day(r.ts_us);
    let row = sums
        .entry((d.clone(), group.clone()))
        .or_insert_with(|| UsageRow {
            day: d,
            group,
            requests: 0,
            errors: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        });
    row.requests += sign;
    row.errors += sign * i64::from(r.status >= 400);
    row.prompt_tokens += sign * r.prompt_tokens.unwrap_or(0) as i64;
    row.completion_tokens += sign * r.completion_tokens.unwrap_or(0) as i64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u128, ts_us: i64) -> AuditRecord {
        AuditRecord::Request(RequestEntry::sample(id, ts_us))
    }

    /// Record `i` of a usage test: three days, two keys, two models, some errors, and
    /// token counts that tell the records apart in the sums.
    fn varied(i: u64) -> RequestEntry {
        let mut r = RequestEntry::sample(
            u128::from(i) + 1,
            (i % 3) as i64 * 86_400_000_000 + i as i64,
        );
        r.key_id = Some(format!("key-{}", i % 2));
        r.model = Some(format!("m{}", i % 5 % 2));
        r.status = if i % 7 == 0 { 500 } else { 200 };
        r.prompt_tokens = Some(i);
        r.completion_tokens = Some(i * 3 + 1);
        r
    }

    fn usage_of(records: &[RequestEntry], group_by: GroupBy) -> Vec<UsageRow> {
        let scan = |visit: &mut dyn FnMut(AuditRecord)| {
            records
                .iter()
                .for_each(|r| visit(AuditRecord::Request(r.clone())));
            Ok(())
        };
        let q = UsageQuery {
            group_by,
            since_us: 0,
            until_us: i64::MAX,
        };
        scan_usage(&scan, &q).expect("scan")
    }

    /// A batch replayed from the spool lands in the journal long after its first copy:
    /// further back than any window of recent ids would reach.
    #[test]
    fn a_record_written_again_a_hundred_thousand_records_later_is_counted_once() {
        let unique: Vec<RequestEntry> = (0..100_000).map(varied).collect();
        let mut journal = unique.clone();
        journal.extend(unique[..10].iter().cloned());
        assert_eq!(
            usage_of(&journal, GroupBy::Key),
            usage_of(&unique, GroupBy::Key)
        );
    }

    proptest::proptest! {
        /// Usage over a journal with repeats anywhere is usage over its distinct records.
        #[test]
        fn usage_counts_each_record_once_wherever_it_repeats(
            n in 1u64..300,
            repeats in proptest::collection::vec((0u64..300, 0usize..400), 0..40),
            by in 0usize..3,
        ) {
            let unique: Vec<RequestEntry> = (0..n).map(varied).collect();
            let mut journal = unique.clone();
            for (which, at) in repeats {
                let at = at % (journal.len() + 1);
                journal.insert(at, unique[(which % n) as usize].clone());
            }
            let by = [GroupBy::User, GroupBy::Key, GroupBy::Model][by];
            proptest::prop_assert_eq!(usage_of(&journal, by), usage_of(&unique, by));
        }

        /// The bounded two-pass pager answers what sorting the whole journal would.
        #[test]
        fn journal_pages_match_a_full_sort(
            times in proptest::collection::vec(0i64..8, 0..40),
            dup_every in 1usize..6,
            limit in 1usize..6,
            after_pick in proptest::option::of(0usize..40),
        ) {
            // Ids are distinct; a retried batch repeats some records right after themselves.
            let mut all = Vec::new();
            for (i, ts) in times.iter().enumerate() {
                all.push(request(i as u128 + 1, *ts));
                if i % dup_every == 0 {
                    all.push(request(i as u128 + 1, *ts));
                }
            }
            let mut want: Vec<(i64, Uuid)> = times
                .iter()
                .enumerate()
                .map(|(i, ts)| (*ts, Uuid::from_u128(i as u128 + 1)))
                .collect();
            want.sort_by_key(|k| Reverse(*k));
            let after = after_pick.filter(|a| *a < times.len()).map(|a| Uuid::from_u128(a as u128 + 1));
            let start = after.map_or(0, |id| want.iter().position(|k| k.1 == id).map_or(0, |p| p + 1));
            let page: Vec<Value> = want[start..]
                .iter()
                .take(limit + 1)
                .map(|(_, id)| json!(id.to_string()))
                .collect();
            let scan = |visit: &mut dyn FnMut(AuditRecord)| {
                all.iter().cloned().for_each(&mut *visit);
                Ok(())
            };
            let got = scan_requests(&scan, &Filter::default(), Page { limit, after })
                .expect("page");
            let ids: Vec<Value> = got["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|r| r["id"].clone())
                .collect();
            let expect_ids: Vec<Value> = page.iter().take(limit).cloned().collect();
            proptest::prop_assert_eq!(ids, expect_ids);
            proptest::prop_assert_eq!(got["has_more"].as_bool(), Some(page.len() > limit));
        }
    }

    #[test]
    fn a_cursor_that_names_no_record_is_refused() {
        let scan = |visit: &mut dyn FnMut(AuditRecord)| {
            visit(request(1, 1));
            Ok(())
        };
        let page = Page {
            limit: 5,
            after: Some(Uuid::from_u128(9)),
        };
        assert!(scan_requests(&scan, &Filter::default(), page).is_err());
    }

    #[test]
    fn times_in_three_spellings() {
        let a = time("since", "2026-11-28T00:00:00Z").expect("rfc3339");
        assert_eq!(time("since", "2026-11-28").expect("date"), a);
        assert_eq!(
            time("since", &(a / 1_000_000).to_string()).expect("secs"),
            a
        );
        assert!(time("since", "yesterday").is_err());
    }

    /// A time the answer could not spell back (it came back as 1970) is refused.
    #[test]
    fn times_past_year_9999_are_refused() {
        assert!(time("until", "9999-12-31").is_ok());
        for v in [
            "253402300800",
            "9000000000000",
            "-62167219201",
            "+10000-01-01",
        ] {
            let e = time("until", v).expect_err(v);
            assert!(e.to_string().contains("until"), "{v}: {e}");
        }
        assert!(parse_usage(Some("until=9000000000000"), 0).is_err());
    }

    #[test]
    fn unknown_and_bad_parameters_are_refused() {
        assert!(parse_list(Some("modle=x"), false).is_err());
        assert!(parse_list(Some("limit=0"), false).is_err());
        assert!(parse_list(Some("limit=1001"), false).is_err());
        assert!(parse_list(Some("status=abc"), false).is_err());
        assert!(
            parse_list(Some("model=x"), true).is_err(),
            "activity has no model"
        );
        let (f, p) = parse_list(Some("model=m&status=200&limit=5"), false).expect("ok");
        assert_eq!(
            (f.model.as_deref(), f.status, p.limit),
            (Some("m"), Some(200), 5)
        );
        assert!(parse_usage(Some("group_by=team"), 0).is_err());
    }
}
