//! The console in a real browser: Chromium driven through chromedriver (WebDriver). Sign-in,
//! the overview's figures against the statistics API's, paging through messages that share one
//! millisecond, message content that must stay inert, sessions that end, and one app's session
//! against another app's data. Screenshots of each page go to
//! `target/tmp/console-screenshots/` for a person to look at.

use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::time::Duration;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// chromedriver on a free port, stopped when the test ends.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the console tests drive Chromium through chromedriver (Debian: apt-get install \
                 chromium chromium-driver; .ci/run installs them): {e}"
            )
        });
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Driver { child, port }
}

async fn browser(d: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1400"],
        }
    });
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a Chromium session")
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Clicks what `what` finds and waits for the page it leads to (a click may return before the
/// browser has loaded the next document).
async fn click_through(c: &Client, what: Locator<'_>) {
    c.execute("window.__before_click = true;", vec![])
        .await
        .unwrap();
    c.find(what).await.unwrap().click().await.unwrap();
    for _ in 0..400 {
        let old = c
            .execute("return window.__before_click === true;", vec![])
            .await
            .unwrap();
        if old == json!(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("clicking {what:?} led nowhere");
}

async fn sign_in(c: &Client, url: &str, key: &str, secret: &str) {
    c.goto(&format!("{url}/console")).await.unwrap();
    c.find(Locator::Css("#app_key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    c.find(Locator::Css("#master_secret"))
        .await
        .unwrap()
        .send_keys(secret)
        .await
        .unwrap();
    click_through(c, Locator::Css("#sign-in")).await;
}

async fn path(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A table's body as rows of cell texts.
async fn table(c: &Client, id: &str) -> Vec<Vec<String>> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))
                .map(r => Array.from(r.children).map(x => x.textContent));",
            vec![json!(id)],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The msgids of the rows of the message table.
async fn msgids(c: &Client) -> Vec<u64> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#messages tr.message')).map(r => r.dataset.msgid);",
            vec![],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().parse().unwrap())
        .collect()
}

fn browse(url: &str, scope: &str, id: &str, begin: i64, end: i64, count: u16) -> String {
    format!(
        "{url}/console/messages?scope={scope}&id={}&begin={}&end={}&count={count}",
        enc(id),
        enc(&sh(begin)),
        enc(&sh(end))
    )
}

/// A week of varied traffic, a group whose 120 messages share one millisecond, and a message
/// whose content is markup.
async fn fill(s: &TestServer, creds: &Creds) {
    let mut events = Vec::new();
    for i in 0..400u64 {
        let t = T0 - 6 * DAY - 19 * HOUR + (i as i64 * (6 * DAY + 18 * HOUR) / 400);
        let from = format!("u{}", i % 23);
        events.push(match i % 6 {
            0 | 1 => text_message(i + 1, t, "single", &format!("u{}", i % 17), &from),
            2 => text_message(i + 1, t, "group", &format!("g{}", i % 5), &from),
            3 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "group",
                        "target_id": "g1", "from_id": from, "msg_type": "image",
                        "msg_body": {"media_id": format!("qiniu/image/{i}"), "width": 640}}),
            4 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "chatroom",
                        "target_id": "10055", "from_id": from, "msg_type": "voice",
                        "msg_body": {"media_id": "v", "duration": 3}}),
            _ => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "single",
                        "target_id": "u1", "from_id": from, "msg_type": "custom", "msg_body": {"k": i}}),
        });
        if i % 20 == 0 {
            events.push(json!({"event": "user_registered", "username": from, "time": t - 1}));
            events.push(
                json!({"event": "group_created", "gid": format!("g{}", i % 5), "time": t - 1}),
            );
        }
        if i % 3 == 0 {
            events.push(
                json!({"event": "user_login", "username": format!("u{}", i % 29), "time": t}),
            );
        }
    }
    let tie = T0 - 2 * HOUR + 123;
    for i in 0..120u64 {
        events.push(text_message(
            10_000 + i,
            tie,
            "group",
            "tie",
            &format!("u{}", i % 9),
        ));
    }
    events.push(json!({"event": "message", "msgid": 20_000, "msg_ctime": T0 - HOUR,
        "target_type": "group", "target_id": "xss", "from_id": "<b>mallory</b>", "msg_type": "text",
        "from_name": "\"><img src=x onerror=\"window.__pwned=1\">",
        "msg_body": {"text": "<script>window.__pwned=2</script><img src=x onerror=\"window.__pwned=3\"> \"quoted\" & 'single'"}}));
    let (status, body) = s.ingest_as(creds, ndjson(&events)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_the_apis_figures_and_browses_messages() {
    let s = TestServer::start().await;
    fill(&s, &s.app).await;
    let d = driver();
    let c = browser(&d).await;

    // Not signed in: the sign-in page. A wrong secret is told apart from nothing else.
    c.goto(&format!("{}/console/overview", s.url))
        .await
        .unwrap();
    assert_eq!(path(&c).await, "/console/login");
    sign_in(&c, &s.url, &s.app.key, "not-the-secret").await;
    assert_eq!(
        text(&c, "#notice").await,
        "Unknown app key or wrong master secret."
    );
    screenshot(&c, "1-sign-in-refused").await;
    c.goto(&format!("{}/console", s.url)).await.unwrap();
    sign_in(&c, &s.url, &s.app.key, &s.app.secret).await;
    assert_eq!(path(&c).await, "/console/overview");
    screenshot(&c, "2-overview-7-days").await;

    // The overview's figures are the statistics API's, for every span.
    let start = &sh(T0 - 6 * DAY)[..10];
    let (_, users) = s
        .get(&format!(
            "/v2/statistic/users?time_unit=DAY&start={start}&duration=7"
        ))
        .await;
    let (_, groups) = s
        .get(&format!(
            "/v2/statistic/groups?time_unit=DAY&start={start}&duration=7"
        ))
        .await;
    let (_, msgs) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=DAY&start={start}&duration=7"
        ))
        .await;
    let want_users: Vec<Vec<String>> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            [
                "date",
                "new_users",
                "active_users",
                "send_msg_users",
                "total_users",
            ]
            .iter()
            .map(|k| b[k].to_string().trim_matches('"').to_owned())
            .collect()
        })
        .collect();
    assert_eq!(table(&c, "users-table").await, want_users);
    let want_groups: Vec<Vec<String>> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            ["date", "new_group", "active_group", "total_group"]
                .iter()
                .map(|k| b[k].to_string().trim_matches('"').to_owned())
                .collect()
        })
        .collect();
    assert_eq!(table(&c, "groups-table").await, want_groups);
    let kinds = |m: &Value| -> Vec<Vec<String>> {
        m["send_msg_stat"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                [
                    "time",
                    "single_send_msg",
                    "group_send_msg",
                    "chatroom_send_msg",
                ]
                .iter()
                .map(|k| b[k].to_string().trim_matches('"').to_owned())
                .collect()
            })
            .collect()
    };
    assert_eq!(table(&c, "kinds-table").await, kinds(&msgs));
    // By type: the API gives the span's totals per kind; the table's columns add up to them.
    let types = table(&c, "types-table").await;
    for (col, class) in ["txt_msg", "image_msg", "voice_msg", "other_msg"]
        .iter()
        .enumerate()
    {
        let shown: u64 = types
            .iter()
            .map(|r| r[col + 1].parse::<u64>().unwrap())
            .sum();
        let api: u64 = ["single_msg_stat", "group_msg_stat", "chatroom_msg_stat"]
            .iter()
            .map(|k| msgs[k][class].as_u64().unwrap())
            .sum();
        assert_eq!(shown, api, "{class}");
    }
    let total_shown: u64 = table(&c, "kinds-table")
        .await
        .iter()
        .map(|r| {
            r[1..]
                .iter()
                .map(|v| v.parse::<u64>().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(total_shown, 400 + 120 + 1);
    // A day by hour.
    click_through(&c, Locator::LinkText("A day by hour")).await;
    let day = &sh(T0)[..10];
    let (_, hours) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=HOUR&start={}&duration=24",
            enc(&format!("{day} 00"))
        ))
        .await;
    assert_eq!(table(&c, "kinds-table").await, kinds(&hours));
    // The day's busiest: the extension endpoint's lists, ranked alike; ids shown as text.
    let (_, busiest) = s.get(&format!("/v2/statistic/busiest?date={day}")).await;
    for (list, id, table_id) in [
        ("senders", "username", "busiest-senders-table"),
        ("groups", "gid", "busiest-groups-table"),
    ] {
        let want: Vec<Vec<String>> = busiest[list]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                vec![
                    (i + 1).to_string(),
                    t[id].as_str().unwrap().to_owned(),
                    format!(" {}", t["messages"]),
                ]
            })
            .collect();
        assert!(!want.is_empty(), "{busiest}");
        assert_eq!(table(&c, table_id).await, want, "{list}");
    }
    assert_eq!(busiest["groups"][0]["gid"], "tie", "{busiest}");
    screenshot(&c, "3-overview-day-by-hour").await;
    c.execute(
        "document.getElementById('busiest').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    screenshot(&c, "3-overview-busiest").await;
    for span in ["30 days", "60 days", "Months"] {
        click_through(&c, Locator::LinkText(span)).await;
        assert!(c.find(Locator::Css("#kinds-table")).await.is_ok(), "{span}");
    }
    screenshot(&c, "4-overview-months").await;

    // 120 messages in one millisecond, 7 a page: every one once, in the API's order.
    let (_, want) = s
        .walk(
            &s.app,
            "/v2/groups/tie/messages",
            1000,
            &sh(T0 - DAY),
            &sh(T0),
        )
        .await;
    let want: Vec<u64> = want.iter().map(|m| m["msgid"].as_u64().unwrap()).collect();
    assert_eq!(want.len(), 120);
    c.goto(&browse(&s.url, "group", "tie", T0 - DAY, T0, 7))
        .await
        .unwrap();
    screenshot(&c, "5-messages").await;
    let mut seen = Vec::new();
    loop {
        seen.extend(msgids(&c).await);
        assert_eq!(text(&c, "#total").await, "120");
        if c.find(Locator::Css("#next")).await.is_err() {
            break;
        }
        click_through(&c, Locator::Css("#next")).await;
    }
    assert_eq!(seen, want, "no gaps, no repeats");

    // An expired cursor: the walk starts again, saying so.
    c.goto(&browse(&s.url, "group", "tie", T0 - DAY, T0, 7))
        .await
        .unwrap();
    let first = msgids(&c).await;
    s.clock.set(T0 + 121_000);
    click_through(&c, Locator::Css("#next")).await;
    assert!(text(&c, "#notice").await.contains("expired"));
    assert_eq!(msgids(&c).await, first, "back at the first page");
    assert_eq!(text(&c, "#first").await, "1");
    s.clock.set(T0);

    // Markup in a message is shown as text and does nothing.
    c.goto(&browse(&s.url, "group", "xss", T0 - DAY, T0, 10))
        .await
        .unwrap();
    c.find(Locator::Css("#messages summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    screenshot(&c, "6-message-with-markup").await;
    let probe = c
        .execute(
            "return [typeof window.__pwned, document.querySelectorAll('script').length,
                     document.querySelectorAll('main img').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(probe, json!(["undefined", 0, 0]));
    let row = text(&c, "#messages tr.message").await;
    assert!(row.contains("<script>window.__pwned=2</script>"), "{row}");
    assert!(row.contains("<b>mallory</b>"), "{row}");
    let body = text(&c, "#messages pre.body").await;
    assert!(body.contains(r#"\"quoted\" & 'single'"#), "{body}");

    // Signing out ends the session.
    click_through(&c, Locator::Css("#sign-out")).await;
    assert_eq!(text(&c, "#notice").await, "Signed out.");
    c.goto(&format!("{}/console/overview", s.url))
        .await
        .unwrap();
    assert_eq!(path(&c).await, "/console/login");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_shows_only_its_app_and_ends_when_it_expires_or_the_secret_changes() {
    let s = TestServer::start().await;
    let other = s.create_app().await;
    fill(&s, &s.app).await;
    s.ingest_as(
        &other,
        ndjson(&[text_message(777_777, T0 - HOUR, "group", "theirs", "eve")]),
    )
    .await;
    let d = driver();
    let c = browser(&d).await;
    sign_in(&c, &s.url, &s.app.key, &s.app.secret).await;
    assert_eq!(path(&c).await, "/console/overview");

    // Whatever the URL asks, the pages are the signed-in app's.
    c.goto(&browse(&s.url, "group", "theirs", T0 - DAY, T0, 100))
        .await
        .unwrap();
    assert!(msgids(&c).await.is_empty());
    assert_eq!(text(&c, "#range").await, "No messages in this window.");
    c.goto(&browse(&s.url, "app", "", T0 - DAY, T0, 1000))
        .await
        .unwrap();
    assert!(!msgids(&c).await.contains(&777_777));
    assert!(text(&c, "header .app").await.contains(&s.app.key));

    // A cookie changed by hand is no session.
    let cookie = c.get_named_cookie("imreport_console").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let mut forged = cookie.clone();
    let v = forged.value().to_owned();
    // One character changed (to another: an 'A' left as 'A' was the same cookie, 1 run in 64).
    let other = if &v[10..11] == "A" { "B" } else { "A" };
    forged.set_value(format!("{}{other}{}", &v[..10], &v[11..]));
    assert_ne!(forged.value(), v);
    c.delete_cookie("imreport_console").await.unwrap();
    c.add_cookie(forged.into_owned()).await.unwrap();
    c.goto(&format!("{}/console/overview", s.url))
        .await
        .unwrap();
    assert_eq!(path(&c).await, "/console/login");

    // Sessions expire (8 hours by default), and end when the master secret is rotated.
    sign_in(&c, &s.url, &s.app.key, &s.app.secret).await;
    s.clock.set(T0 + 8 * HOUR);
    c.goto(&format!("{}/console/overview", s.url))
        .await
        .unwrap();
    assert_eq!(path(&c).await, "/console/login");
    assert!(text(&c, "#notice").await.contains("expired"));
    screenshot(&c, "7-session-expired").await;
    sign_in(&c, &s.url, &s.app.key, &s.app.secret).await;
    assert_eq!(path(&c).await, "/console/overview");
    imreport_store::apps::rotate_secret(
        s.store.as_ref(),
        &s.app.key,
        imreport_store::apps::RotateSecret::default(),
    )
    .await
    .unwrap();
    c.goto(&format!("{}/console/overview", s.url))
        .await
        .unwrap();
    assert_eq!(path(&c).await, "/console/login");
    c.close().await.unwrap();
}

#[tokio::test]
async fn the_console_refuses_what_it_must_over_plain_http() {
    let s = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = format!("{}/console/login", s.url);
    let form =
        |key: &str, secret: &str| format!("app_key={}&master_secret={}", enc(key), enc(secret));
    let csp = |r: &reqwest::Response| {
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    };
    // Wrong credentials: 401, no cookie; an unknown key gets the same answer.
    for (key, secret) in [
        (s.app.key.as_str(), "wrong"),
        ("nosuchapp00000000000000", "x"),
    ] {
        let r = http
            .post(&login)
            .body(form(key, secret))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(csp(&r) && r.headers().get("set-cookie").is_none());
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("Unknown app key or wrong master secret.")
        );
    }
    // An oversized form is refused before anything is looked up.
    let r = http
        .post(&login)
        .body("a".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // No session, or a forged one: to the sign-in page.
    for cookie in [
        None,
        Some("imreport_console=garbage"),
        Some("imreport_console="),
    ] {
        let mut req = http.get(format!("{}/console/messages?scope=app", s.url));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 303, "{cookie:?}");
        assert_eq!(r.headers()["location"], "/console/login?why=signin");
        assert!(csp(&r));
    }
    // The right credentials: a sealed, HttpOnly, SameSite=Strict cookie for /console.
    let r = http
        .post(&login)
        .body(form(&s.app.key, &s.app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("; Path=/console; HttpOnly; SameSite=Strict; Max-Age=28800"),
        "{set}"
    );
    assert!(
        !set.contains(&s.app.key) && !set.contains(&s.app.secret),
        "sealed: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{}/console/overview", s.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(page.text().await.unwrap().contains("id=\"kinds-table\""));
    // Behind a TLS proxy the cookie is Secure too; signing out clears it.
    let r = http
        .post(&login)
        .header("x-forwarded-proto", "https")
        .body(form(&s.app.key, &s.app.secret))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
    let r = http
        .post(format!("{}/console/logout", s.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("imreport_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
    );
}
