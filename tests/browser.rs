//! The tenant tutorial end to end, in headless Chromium driven over WebDriver.
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the test says
//! so and passes, unless `DIESEL_TENANCY_REQUIRE_BROWSER=1` is set (as CI does
//! after installing them). Screenshots go to `target/e2e-screenshots/`.
#![allow(missing_docs)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_tenancy::testing::TestDatabase;
use fantoccini::{Client, ClientBuilder, Locator};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `target/<profile>`, from this test binary's path (`target/<profile>/deps/...`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn tutorial_binary() -> PathBuf {
    let bin = profile_dir().join("examples").join("tenant_tutorial");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "tenant_tutorial"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the tutorial failed");
    }
    bin
}

async fn screenshot(client: &Client, dir: &Path, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// The text of `css`, read again if the page changes under it (after a form
/// submission the old page's element can go stale between finding and reading).
async fn text(client: &Client, css: &str) -> String {
    wait_text(client, css, "").await
}

/// The text of `css` once it contains `needle` (or whatever it holds after 20
/// seconds, for the caller's assertion to report).
async fn wait_text(client: &Client, css: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
        }
        if std::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn fill(client: &Client, css: &str, value: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_in_a_real_browser() {
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let driver = find(&["/usr/bin/chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let required = std::env::var("DIESEL_TENANCY_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "chromium and chromedriver are required: apt-get install chromium chromium-driver"
        );
        eprintln!(
            "SKIPPED the browser test: install chromium and chromium-driver (apt-get install chromium chromium-driver) to run it"
        );
        return;
    };

    let db = TestDatabase::new().unwrap();
    let port = free_port();
    let mut app = KillOnDrop(
        Command::new(tutorial_binary())
            .env("DATABASE_URL", db.url())
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "the tutorial", &mut app.0);

    let driver_port = free_port();
    let mut chromedriver = KillOnDrop(
        Command::new(driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(driver_port, "chromedriver", &mut chromedriver.0);

    let profile = std::env::temp_dir().join(format!("dt-chromium-{}", std::process::id()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1000,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a WebDriver session");

    let shots = profile_dir().parent().unwrap().join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let public = format!("http://localhost:{port}/");

    // Sign a tenant up on the public site.
    client.goto(&public).await.unwrap();
    assert!(
        wait_text(&client, "#tenants", "Acme Corp")
            .await
            .contains("Acme Corp")
    );
    fill(&client, "#name", "Initech").await;
    fill(&client, "#subdomain", "initech").await;
    click(&client, "#signup").await;
    assert!(
        wait_text(&client, "#created", "initech.localhost")
            .await
            .contains("initech.localhost")
    );
    assert!(
        wait_text(&client, "#tenants", "Initech")
            .await
            .contains("Initech")
    );
    screenshot(&client, &shots, "1-public-signed-up.png").await;

    // Bad input: a taken name and an invalid subdomain create nothing.
    fill(&client, "#name", "Initech again").await;
    fill(&client, "#subdomain", "initech").await;
    click(&client, "#signup").await;
    assert!(
        wait_text(&client, "#error", "taken")
            .await
            .contains("taken")
    );
    fill(&client, "#subdomain", "Not-Valid").await;
    click(&client, "#signup").await;
    assert!(
        wait_text(&client, "#error", "lowercase")
            .await
            .contains("lowercase")
    );
    assert!(!text(&client, "#tenants").await.contains("Initech again"));
    screenshot(&client, &shots, "2-public-bad-input.png").await;

    // The new tenant's own site: add a product.
    client
        .goto(&format!("http://initech.localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(text(&client, "#tenant").await, "Initech");
    fill(&client, "#product", "Red stapler").await;
    fill(&client, "#price", "1299").await;
    click(&client, "#add").await;
    assert!(
        wait_text(&client, "#products", "Red stapler")
            .await
            .contains("Red stapler")
    );
    screenshot(&client, &shots, "3-initech.png").await;

    // Another tenant does not see it.
    client
        .goto(&format!("http://acme.localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(text(&client, "#tenant").await, "Acme Corp");
    assert!(!text(&client, "#products").await.contains("Red stapler"));
    screenshot(&client, &shots, "4-acme.png").await;

    // An unknown subdomain gets the 404 page.
    client
        .goto(&format!("http://nobody.localhost:{port}/"))
        .await
        .unwrap();
    assert!(
        wait_text(&client, "#not-found", "404")
            .await
            .contains("404")
    );
    screenshot(&client, &shots, "5-not-found.png").await;

    // A suspended tenant (suspended by another process, which the app hears
    // through NOTIFY) gets the suspended page, not the 404.
    diesel_tenancy::suspend_tenant(
        &mut <diesel::PgConnection as diesel::Connection>::establish(db.url()).unwrap(),
        &diesel_tenancy::SchemaName::new("initech").unwrap(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        client
            .goto(&format!("http://initech.localhost:{port}/"))
            .await
            .unwrap();
        if text(&client, "body").await.contains("is suspended") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "initech is still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text(&client, "#suspended").await.contains("is suspended"));
    screenshot(&client, &shots, "6-suspended.png").await;

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}
