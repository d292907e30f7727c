//! Report V2 statistics: `/v2/statistic/users`, `/v2/statistic/groups`, `/v2/statistic/messages`;
//! and imreport's own `/v2/statistic/busiest`.

use crate::error::ApiError;
use crate::history::query_pairs;
use crate::{AppState, json_body};
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use imreport_domain::app::App;
use imreport_domain::rollup::Busiest;
use imreport_domain::rollup::MsgCounts;
use imreport_domain::stats::{
    BusiestRequest, GroupsBucket, StatsKind, StatsRequest, TimeUnit, UsersBucket, busiest_report,
    groups_report, messages_report, month_counts, parse_busiest, parse_stats, users_report,
};
use imreport_domain::time::date_of_day;

/// A statistics request checked as the API checks it.
pub(crate) fn request(
    st: &AppState,
    pairs: &[(String, String)],
    kind: StatsKind,
) -> Result<StatsRequest, ApiError> {
    let req = parse_stats(kind, pairs)?;
    let retained = st.store.stats_retained_from();
    if req.day_span().1 < retained {
        return Err(ApiError::invalid(format!(
            "every bucket asked for lies before the retained window: statistics are kept from {} on; ask for a later start",
            date_of_day(retained)
        )));
    }
    Ok(req)
}

/// The day rows a users or groups request covers.
async fn days(
    st: &AppState,
    app: &App,
    req: &StatsRequest,
) -> Result<imreport_store::DaysReport, ApiError> {
    Ok(st
        .store
        .stats_days(app, req.first, req.first + req.n - 1)
        .await?)
}

/// The users statistics of a request: what the API answers and the console draws.
pub(crate) async fn users_buckets(
    st: &AppState,
    app: &App,
    req: &StatsRequest,
) -> Result<Vec<UsersBucket>, ApiError> {
    let r = days(st, app, req).await?;
    Ok(users_report(req, &r.days, r.users_before))
}

/// The groups statistics of a request.
pub(crate) async fn groups_buckets(
    st: &AppState,
    app: &App,
    req: &StatsRequest,
) -> Result<Vec<GroupsBucket>, ApiError> {
    let r = days(st, app, req).await?;
    Ok(groups_report(req, &r.days, r.groups_before))
}

/// The message counts of each bucket of a request, by kind and class.
pub(crate) async fn message_buckets(
    st: &AppState,
    app: &App,
    req: &StatsRequest,
) -> Result<Vec<MsgCounts>, ApiError> {
    Ok(match req.unit {
        TimeUnit::Hour => {
            st.store
                .stats_hours(app, req.first, req.first + req.n - 1)
                .await?
        }
        TimeUnit::Day => days(st, app, req)
            .await?
            .days
            .iter()
            .map(|d| d.msgs)
            .collect(),
        TimeUnit::Month => {
            let (from, to) = req.day_span();
            month_counts(req, from, &st.store.stats_days(app, from, to).await?.days)
        }
    })
}

/// A busiest request checked as the API checks it (a retained day).
pub(crate) fn busiest_request(
    st: &AppState,
    pairs: &[(String, String)],
) -> Result<BusiestRequest, ApiError> {
    let req = parse_busiest(pairs)?;
    let retained = st.store.stats_retained_from();
    if req.day < retained {
        return Err(ApiError::invalid(format!(
            "date={} lies before the retained window: statistics are kept from {} on",
            date_of_day(req.day),
            date_of_day(retained)
        )));
    }
    Ok(req)
}

/// The busiest senders and groups of a request's day: what the API answers and the console
/// shows.
pub(crate) async fn busiest_lists(
    st: &AppState,
    app: &App,
    req: &BusiestRequest,
) -> Result<Busiest, ApiError> {
    Ok(st.store.busiest(app, req.day, req.n).await?)
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    json_body(serde_json::to_vec(v).expect("serializable"))
}

pub async fn users(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, &query_pairs(q.as_deref()), StatsKind::Users)?;
    Ok(json(&users_buckets(&st, &app, &req).await?))
}

pub async fn groups(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, &query_pairs(q.as_deref()), StatsKind::Groups)?;
    Ok(json(&groups_buckets(&st, &app, &req).await?))
}

pub async fn messages(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, &query_pairs(q.as_deref()), StatsKind::Messages)?;
    let buckets = message_buckets(&st, &app, &req).await?;
    Ok(json(&messages_report(&req, &buckets)))
}

/// `/v2/statistic/busiest?date=yyyy-MM-dd&count=N`: an imreport extension.
pub async fn busiest(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = busiest_request(&st, &query_pairs(q.as_deref()))?;
    let lists = busiest_lists(&st, &app, &req).await?;
    Ok(json(&busiest_report(&req, &lists)))
}
