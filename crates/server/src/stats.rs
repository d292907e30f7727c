//! Report V2 statistics: `/v2/statistic/users`, `/v2/statistic/groups`, `/v2/statistic/messages`.

use crate::error::ApiError;
use crate::history::query_pairs;
use crate::{AppState, json_body};
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use imreport_domain::app::App;
use imreport_domain::stats::{
    StatsKind, StatsRequest, TimeUnit, groups_report, messages_report, month_counts, parse_stats,
    users_report,
};
use imreport_domain::time::date_of_day;

fn request(st: &AppState, raw: Option<&str>, kind: StatsKind) -> Result<StatsRequest, ApiError> {
    let req = parse_stats(kind, &query_pairs(raw))?;
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

pub async fn users(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, q.as_deref(), StatsKind::Users)?;
    let r = days(&st, &app, &req).await?;
    Ok(json_body(
        serde_json::to_vec(&users_report(&req, &r.days, r.users_before)).expect("serializable"),
    ))
}

pub async fn groups(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, q.as_deref(), StatsKind::Groups)?;
    let r = days(&st, &app, &req).await?;
    Ok(json_body(
        serde_json::to_vec(&groups_report(&req, &r.days, r.groups_before)).expect("serializable"),
    ))
}

pub async fn messages(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let req = request(&st, q.as_deref(), StatsKind::Messages)?;
    let buckets = match req.unit {
        TimeUnit::Hour => {
            st.store
                .stats_hours(&app, req.first, req.first + req.n - 1)
                .await?
        }
        TimeUnit::Day => days(&st, &app, &req)
            .await?
            .days
            .iter()
            .map(|d| d.msgs)
            .collect(),
        TimeUnit::Month => {
            let (from, to) = req.day_span();
            month_counts(&req, from, &st.store.stats_days(&app, from, to).await?.days)
        }
    };
    Ok(json_body(
        serde_json::to_vec(&messages_report(&req, &buckets)).expect("serializable"),
    ))
}
