//! The overview: the statistics API's figures for a span, each drawn and tabled. Every number
//! comes from the same functions the API answers with, for the same request.

use super::charts::{self, Series};
use super::{frame, notice, signed_in};
use crate::AppState;
use crate::error::ApiError;
use crate::stats::{
    busiest_lists, busiest_request, groups_buckets, message_buckets, request, users_buckets,
};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use imreport_domain::app::App;
use imreport_domain::rollup::{Busiest, MsgCounts};
use imreport_domain::stats::{GroupsBucket, StatsKind, StatsRequest, UsersBucket};
use jiff::ToSpan;
use jiff::civil::Date;
use maud::{Markup, PreEscaped, html};

/// The spans a person can pick.
#[derive(Clone, Copy, PartialEq)]
enum Span {
    Days(i64),
    /// One day, by hour.
    Day,
    /// The current and the previous month (the API's MONTH unit takes two at most).
    Months,
}

impl Span {
    fn parse(v: &str) -> Span {
        match v {
            "30" => Span::Days(30),
            "60" => Span::Days(60),
            "day" => Span::Day,
            "months" => Span::Months,
            _ => Span::Days(7),
        }
    }

    fn key(self) -> String {
        match self {
            Span::Days(n) => n.to_string(),
            Span::Day => "day".into(),
            Span::Months => "months".into(),
        }
    }
}

/// What one span shows.
struct Figures {
    title: String,
    users: Option<Vec<UsersBucket>>,
    groups: Option<Vec<GroupsBucket>>,
    labels: Vec<String>,
    messages: Vec<MsgCounts>,
    /// A day's busiest senders and groups (the day span only).
    busiest: Option<Busiest>,
}

fn pairs(unit: &str, start: String, n: i64) -> Vec<(String, String)> {
    vec![
        ("time_unit".into(), unit.into()),
        ("start".into(), start),
        ("duration".into(), n.to_string()),
    ]
}

async fn figures(st: &AppState, app: &App, span: Span, day: Date) -> Result<Figures, ApiError> {
    let stats = |kind, p: &[(String, String)]| request(st, p, kind);
    let date = |d: Date| d.strftime("%Y-%m-%d").to_string();
    let labels = |req: &StatsRequest| (0..req.n).map(|i| req.label(i)).collect::<Vec<_>>();
    match span {
        Span::Days(n) => {
            let start = date(day.checked_sub((n - 1).days()).unwrap_or(day));
            let p = pairs("DAY", start, n);
            let (u, g, m) = (
                stats(StatsKind::Users, &p)?,
                stats(StatsKind::Groups, &p)?,
                stats(StatsKind::Messages, &p)?,
            );
            Ok(Figures {
                title: format!("The last {n} days, to {}", date(day)),
                users: Some(users_buckets(st, app, &u).await?),
                groups: Some(groups_buckets(st, app, &g).await?),
                labels: labels(&m),
                messages: message_buckets(st, app, &m).await?,
                busiest: None,
            })
        }
        Span::Day => {
            let p = pairs("DAY", date(day), 1);
            let (u, g) = (stats(StatsKind::Users, &p)?, stats(StatsKind::Groups, &p)?);
            let m = stats(
                StatsKind::Messages,
                &pairs("HOUR", format!("{} 00", date(day)), 24),
            )?;
            let b = busiest_request(st, &[("date".into(), date(day))])?;
            Ok(Figures {
                title: format!("{} by hour", date(day)),
                users: Some(users_buckets(st, app, &u).await?),
                groups: Some(groups_buckets(st, app, &g).await?),
                labels: labels(&m),
                messages: message_buckets(st, app, &m).await?,
                busiest: Some(busiest_lists(st, app, &b).await?),
            })
        }
        Span::Months => {
            let first = day.first_of_month().checked_sub(1.month()).unwrap_or(day);
            let m = stats(
                StatsKind::Messages,
                &pairs("MONTH", first.strftime("%Y-%m").to_string(), 2),
            )?;
            Ok(Figures {
                title: "This month and the last".into(),
                users: None,
                groups: None,
                labels: labels(&m),
                messages: message_buckets(st, app, &m).await?,
                busiest: None,
            })
        }
    }
}

fn table(id: &str, head: &[&str], rows: Vec<Vec<String>>) -> Markup {
    html! {
        details open[rows.len() <= 2] {
            summary { "Table" }
            table id=(id) {
                thead { tr { @for h in head { th { (h) } } } }
                tbody {
                    @for r in &rows {
                        tr { @for (i, c) in r.iter().enumerate() {
                            @if i == 0 { th scope="row" { (c) } } @else { td { (c) } }
                        } }
                    }
                }
            }
        }
    }
}

fn chart(svg: String) -> Markup {
    // plotters' own SVG: numbers and the captions and labels given here, nothing from a user.
    html! { figure.chart { (PreEscaped(svg)) } }
}

fn render(f: &Figures) -> Markup {
    let n = |v: u64| v.to_string();
    let kinds: [(&str, usize, charts::RGBColor); 3] = [
        ("single", 0, charts::BLUE_),
        ("group", 1, charts::ORANGE),
        ("chatroom", 2, charts::GREEN_),
    ];
    let classes: [(&str, usize, charts::RGBColor); 4] = [
        ("text", 0, charts::BLUE_),
        ("image", 1, charts::ORANGE),
        ("voice", 2, charts::GREEN_),
        ("other", 3, charts::PURPLE),
    ];
    let by_kind = |k: usize| f.messages.iter().map(|b| b[k].iter().sum()).collect();
    let by_class = |c: usize| {
        f.messages
            .iter()
            .map(|b| b.iter().map(|r| r[c]).sum())
            .collect()
    };
    html! {
        h2 { (f.title) }
        section #users {
            h3 { "Users" }
            @match &f.users {
                None => p { "Users are counted by day: pick a span of days." },
                Some(u) => {
                    @if u.len() > 1 {
                        (chart(charts::lines("Users per day", &u.iter().map(|b| b.date.clone()).collect::<Vec<_>>(), &[
                            Series { name: "new", values: u.iter().map(|b| b.new_users).collect(), color: charts::BLUE_ },
                            Series { name: "active", values: u.iter().map(|b| b.active_users).collect(), color: charts::ORANGE },
                            Series { name: "sending", values: u.iter().map(|b| b.send_msg_users).collect(), color: charts::GREEN_ },
                        ])))
                        (chart(charts::lines("Registered users", &u.iter().map(|b| b.date.clone()).collect::<Vec<_>>(), &[
                            Series { name: "total", values: u.iter().map(|b| b.total_users.max(0) as u64).collect(), color: charts::PURPLE },
                        ])))
                    }
                    (table("users-table", &["date", "new", "active", "sending", "total"],
                        u.iter().map(|b| vec![b.date.clone(), n(b.new_users), n(b.active_users), n(b.send_msg_users), b.total_users.to_string()]).collect()))
                }
            }
        }
        section #messages-by-kind {
            h3 { "Messages by kind" }
            @if f.labels.len() > 1 {
                (chart(charts::lines("Messages", &f.labels, &kinds.iter().map(|(name, k, c)| Series { name, values: by_kind(*k), color: *c }).collect::<Vec<_>>())))
            }
            (table("kinds-table", &["time", "single", "group", "chatroom"],
                f.labels.iter().zip(&f.messages).map(|(l, b)| vec![l.clone(), n(b[0].iter().sum()), n(b[1].iter().sum()), n(b[2].iter().sum())]).collect()))
        }
        section #messages-by-type {
            h3 { "Messages by type" }
            @if f.labels.len() > 1 {
                (chart(charts::lines("Messages", &f.labels, &classes.iter().map(|(name, c, col)| Series { name, values: by_class(*c), color: *col }).collect::<Vec<_>>())))
            }
            (table("types-table", &["time", "text", "image", "voice", "other"],
                f.labels.iter().zip(&f.messages).map(|(l, b)| {
                    let c = |i: usize| n(b.iter().map(|r| r[i]).sum());
                    vec![l.clone(), c(0), c(1), c(2), c(3)]
                }).collect()))
        }
        section #groups {
            h3 { "Groups" }
            @match &f.groups {
                None => p { "Groups are counted by day: pick a span of days." },
                Some(g) => {
                    @if g.len() > 1 {
                        (chart(charts::lines("Active groups per day", &g.iter().map(|b| b.date.clone()).collect::<Vec<_>>(), &[
                            Series { name: "active", values: g.iter().map(|b| b.active_group).collect(), color: charts::RED_ },
                            Series { name: "new", values: g.iter().map(|b| b.new_group).collect(), color: charts::BLUE_ },
                        ])))
                    }
                    (table("groups-table", &["date", "new", "active", "total"],
                        g.iter().map(|b| vec![b.date.clone(), n(b.new_group), n(b.active_group), b.total_group.to_string()]).collect()))
                }
            }
        }
        @if let Some(b) = &f.busiest {
            section #busiest {
                h3 { "Busiest of the day" }
                p.hint { "The top 10 by messages: senders by messages sent, groups by messages received (" code { "/v2/statistic/busiest" } ")." }
                div.pair {
                    (ranking("busiest-senders-table", "sender", &b.senders))
                    (ranking("busiest-groups-table", "group", &b.groups))
                }
            }
        }
    }
}

fn ranking(id: &str, what: &str, tallies: &[imreport_domain::rollup::Tally]) -> Markup {
    let most = tallies.first().map_or(1, |t| t.messages.max(1));
    html! {
        table id=(id) {
            thead { tr { th { "#" } th { (what) } th { "messages" } } }
            tbody {
                @if tallies.is_empty() { tr { td colspan="3" { "None that day." } } }
                @for (i, t) in tallies.iter().enumerate() {
                    tr {
                        th scope="row" { (i + 1) }
                        td { (t.id) }
                        // A bar of the share of the busiest: a <meter>, as the CSP allows no
                        // inline style.
                        td { meter min="0" max=(most) value=(t.messages) {} " " (t.messages) }
                    }
                }
            }
        }
    }
}

pub async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let app = match signed_in(&st, &headers).await {
        Ok(app) => app,
        Err(r) => return r,
    };
    let q = crate::history::query_pairs(q.as_deref());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let span = Span::parse(get("span").unwrap_or("7"));
    let today = st.tz.civil(st.clock.now_ms()).date();
    let day = get("date")
        .and_then(|d| d.parse::<Date>().ok())
        .unwrap_or(today);
    let spans = [
        ("7", "7 days"),
        ("30", "30 days"),
        ("60", "60 days"),
        ("day", "A day by hour"),
        ("months", "Months"),
    ];
    let body = match figures(&st, &app, span, day).await {
        Ok(f) => render(&f),
        Err(e) => notice(&e.message),
    };
    let content = html! {
        h1 { "Overview" }
        nav.spans {
            @for (k, name) in spans {
                a href={ "/console/overview?span=" (k) } class=[(span.key() == k).then_some("current")] { (name) }
            }
            form method="get" action="/console/overview" {
                input type="hidden" name="span" value="day";
                label { "Day " input type="date" name="date" value=(day.strftime("%Y-%m-%d").to_string()); }
                button type="submit" { "Show" }
            }
        }
        p.hint { "Times are in the report time zone, " code { (st.tz.name()) } ". The figures are the statistics API's for the same span." }
        (body)
    };
    super::page(
        StatusCode::OK,
        frame("Overview", Some(&app), "overview", content),
    )
}
