//! The web client (`client/web/`) in a real browser: headless Chromium driven
//! over WebDriver (chromedriver) against the real `chat-server`, which serves
//! the page, and the real `chat` binary as the other side where a test needs
//! one.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them each test here prints its name and why it skipped, and passes;
//! with `CI=true` it fails instead. The tests take turns (one browser test at
//! a time, each bounded by [`TEST_DEADLINE`]): a browser is heavy on a small
//! machine. Screenshots of the main screens go to `target/screenshots/`.

mod common;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{TestServer, SECRET};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The longest one test may take, start to end.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// How long one expected change on a page may take to show.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a waiting step looks at the page again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long chromedriver may take to listen.
const DRIVER_STARTUP: Duration = Duration::from_secs(20);
/// WebDriver's key code for Enter.
const ENTER: &str = "\u{E007}";

/// One browser test at a time (each starts up to three browsers).
static BROWSER_TURN: Mutex<()> = Mutex::new(());

// ----- the lab: chromedriver, browsers, the runtime fantoccini needs -------

/// What a browser test needs: a chromedriver of its own on a free loopback
/// port (killed on drop) and the async runtime the WebDriver client runs on.
struct Lab {
    driver: Child,
    driver_port: u16,
    chromium: PathBuf,
    runtime: tokio::runtime::Runtime,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The first file named one of `names` in `PATH`.
fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

impl Lab {
    /// Starts chromedriver, or says why the test `name` is skipped (and
    /// fails it instead under `CI=true`).
    fn start(name: &str) -> Option<Lab> {
        let chromium = find_in_path(&["chromium", "chromium-browser"]);
        let driver = find_in_path(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "chromium and chromedriver are not both installed \
                       (apt-get install chromium chromium-driver)";
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!("{name}: {why}, and CI=true requires the browser tests");
            }
            // Written to the stream itself, not through `eprintln!`, so the
            // test harness does not capture it: a skip is always seen.
            let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
            return None;
        };
        let turn = BROWSER_TURN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let driver_port = free_port();
        // Its own process group, so that dropping the lab also ends the
        // browsers chromedriver started (they would outlive it otherwise).
        let driver = Command::new(driver)
            .process_group(0)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + DRIVER_STARTUP;
        while TcpStream::connect(("127.0.0.1", driver_port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Some(Lab {
            driver,
            driver_port,
            chromium,
            runtime,
            _turn: turn,
        })
    }

    /// Runs the test's body, failing it past [`TEST_DEADLINE`].
    fn run(&self, body: impl Future<Output = ()>) {
        self.runtime.block_on(async {
            tokio::time::timeout(TEST_DEADLINE, body)
                .await
                .expect("the test ran past its deadline");
        });
    }

    /// A new headless browser with a profile of its own (its own storage).
    async fn browser(&self, name: &str) -> Browser {
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,800",
        ];
        // Chromium refuses to run as root with its sandbox on; only then.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox");
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.driver_port))
            .await
            .expect("a chromium session");
        Browser {
            client,
            name: name.to_string(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.driver.id()) {
            // SAFETY: kill(2) on the process group chromedriver leads (made
            // with `process_group(0)` at spawn); no memory is involved.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// `target/screenshots/`, created on first use.
fn screenshot_dir() -> PathBuf {
    let server = Path::new(env!("CARGO_BIN_EXE_chat-server"));
    let dir = server
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

/// The page's address on a server.
fn page(server: &TestServer) -> String {
    format!("http://127.0.0.1:{}/", server.port)
}

// ----- one browser ---------------------------------------------------------

/// Chromium's legacy log endpoint: the console messages so far (CSP
/// violations are reported there).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// A browser window on the page, with the steps a person takes.
struct Browser {
    client: Client,
    name: String,
}

impl Browser {
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (its `arguments` are `args`) in the page.
    async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("{}: script failed: {error}\n{script}", self.name))
    }

    /// Types `text` into the field `css` (after clearing it).
    async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.expect(css);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.wait_visible(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .expect(css)
            .click()
            .await
            .unwrap_or_else(|error| panic!("{}: click {css}: {error}", self.name));
    }

    /// Clicks the button inside `scope_css` whose text is `label`.
    async fn click_button(&self, scope_css: &str, label: &str) {
        let script = "const [scope, label] = arguments;
            const button = [...document.querySelectorAll(scope + ' button')]
                .find((b) => b.textContent.trim() === label && b.offsetParent !== null);
            if (!button) return false;
            button.click();
            return true;";
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self
            .eval(script, vec![json!(scope_css), json!(label)])
            .await
            != json!(true)
        {
            assert!(
                Instant::now() < deadline,
                "{}: no button {label:?} in {scope_css}",
                self.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The text of every element matching `css`.
    async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .eval(
                "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent);",
                vec![json!(css)],
            )
            .await;
        serde_json::from_value(found).expect("strings")
    }

    /// Waits until an element matching `css` contains `needle`; returns its text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let texts = self.texts(css).await;
            if let Some(found) = texts.iter().find(|text| text.contains(needle)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("failed-{}", self.name)).await;
                panic!(
                    "{}: nothing matching {css} contains {needle:?}; they read {texts:#?}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until `script` returns true.
    async fn wait_until(&self, what: &str, script: &str, args: Vec<Value>) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.eval(script, args.clone()).await != json!(true) {
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("failed-{}", self.name)).await;
                panic!("{}: {what} never happened", self.name);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_visible(&self, css: &str) {
        self.wait_until(
            &format!("{css} showing"),
            "const e = document.querySelector(arguments[0]); return !!e && e.offsetParent !== null;",
            vec![json!(css)],
        )
        .await;
    }

    /// Saves a screenshot as `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("save the screenshot");
        path
    }

    /// The browser console so far.
    async fn console(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| entry["message"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until a browser console line contains `needle`.
    async fn wait_until_console(&self, needle: &str) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen.extend(self.console().await);
            if seen.iter().any(|line| line.contains(needle)) {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "{}: no console line contains {needle:?}: {seen:#?}",
            self.name
        );
    }

    /// Registers `username` through the page's form; it logs in on its own.
    async fn register(&self, base: &str, username: &str) {
        self.goto(base).await;
        self.wait_visible("#register-form").await;
        self.fill("#register-username", username).await;
        self.fill("#register-email", &format!("{username}@example.com"))
            .await;
        self.fill("#register-password", SECRET).await;
        self.click("#register-form button[type=submit]").await;
        self.wait_text("#connection-text", "Online").await;
        self.wait_text("#account-name", username).await;
    }

    /// Logs in as an existing user through the page's form.
    async fn login(&self, base: &str, username: &str) {
        self.goto(base).await;
        self.wait_visible("#login-form").await;
        self.fill("#login-username", username).await;
        self.fill("#login-password", SECRET).await;
        self.click("#login-form button[type=submit]").await;
        self.wait_text("#connection-text", "Online").await;
    }

    /// Adds a contact through the side panel.
    async fn add_contact(&self, username: &str) {
        self.fill("#add-contact-name", username).await;
        self.click("#add-contact-form button[type=submit]").await;
        self.wait_text("#contacts .name", username).await;
    }

    /// Opens the conversation listed as `title`.
    async fn open_chat(&self, title: &str) {
        let script = "const title = arguments[0];
            const button = [...document.querySelectorAll('#conversations .conversation-button')]
                .find((b) => b.querySelector('.name').textContent === title);
            if (!button) return false;
            button.click();
            return true;";
        self.wait_until(
            &format!("the conversation {title:?} listed"),
            script,
            vec![json!(title)],
        )
        .await;
        self.wait_text("#chat-title", title).await;
    }

    /// Types `text` in the composer and presses Enter.
    async fn send(&self, text: &str) {
        let composer = self
            .client
            .find(Locator::Css("#composer-input"))
            .await
            .expect("composer");
        composer.send_keys(text).await.expect("type");
        composer.send_keys(ENTER).await.expect("press Enter");
    }

    /// Waits for a message whose text is exactly `text`; returns its
    /// `{kind, status, mine}` as the page shows them.
    async fn wait_message(&self, text: &str) -> Value {
        let script = "const text = arguments[0];
            const item = [...document.querySelectorAll('#messages .message')]
                .find((m) => m.querySelector('.text').textContent === text);
            return item ? {kind: item.dataset.kind, status: item.querySelector('.status').textContent,
                           mine: item.classList.contains('mine')} : null;";
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let found = self.eval(script, vec![json!(text)]).await;
            if !found.is_null() {
                return found;
            }
            if Instant::now() > deadline {
                let shown = self.texts("#messages .message").await;
                let page = self
                    .eval(
                        "return {url: location.href, uptime_ms: performance.now(),
                                 navigations: performance.getEntriesByType('navigation').map((e) => e.type)};",
                        vec![],
                    )
                    .await;
                let _ = self.screenshot(&format!("failed-{}", self.name)).await;
                panic!(
                    "{}: no message {text:?}; shown: {shown:#?}; page: {page}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The unread count shown beside the conversation `title` (0 if none).
    async fn unread(&self, title: &str) -> u64 {
        let script =
            "const button = [...document.querySelectorAll('#conversations .conversation-button')]
                .find((b) => b.querySelector('.name').textContent === arguments[0]);
            const badge = button && button.querySelector('.badge');
            return badge && !badge.hidden ? Number(badge.textContent) : 0;";
        self.eval(script, vec![json!(title)])
            .await
            .as_u64()
            .unwrap_or(0)
    }
}

// ----- the `chat` line client ---------------------------------------------

/// `<target>/<profile>/chat`, built beside `chat-server`.
fn chat_binary() -> PathBuf {
    let chat = Path::new(env!("CARGO_BIN_EXE_chat-server")).with_file_name("chat");
    assert!(
        chat.exists(),
        "{} is missing: run `cargo build -p client` first \
         (`cargo test --workspace` builds it)",
        chat.display()
    );
    chat
}

/// A running `chat` fed line by line; killed on drop.
struct Chat {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Chat {
    /// Starts `chat` for `server` with its files in `dir` and runs `first`.
    fn start(server: &TestServer, dir: &Path, first: &str) -> Chat {
        let mut child = Command::new(chat_binary())
            .arg("--url")
            .arg(format!("ws://127.0.0.1:{}", server.port))
            .arg("--session-file")
            .arg(dir.join("session.json"))
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chat");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut chat = Chat {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        chat.send(first);
        chat
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to chat");
        self.stdin.flush().expect("flush to chat");
    }

    /// Waits for a line containing `needle` (blocking: call it between
    /// browser steps, never while a browser step should run).
    fn expect_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "chat: no line containing {needle:?}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers and logs in `username` with `chat`, returning it live.
fn chat_user(server: &TestServer, dir: &Path, username: &str) -> Chat {
    let mut chat = Chat::start(
        server,
        dir,
        &format!("/register {username} {username}@example.com {SECRET}"),
    );
    chat.expect_line("registered");
    chat.send(&format!("/login {username} {SECRET}"));
    chat.expect_line(&format!("logged in as {username}"));
    chat
}

/// True when `needle` occurs in any file of the server's data directory
/// (the database, its WAL, anything else).
fn data_dir_contains(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

// ----- the tests -------------------------------------------------------------

/// Two browsers register, add each other (a request, accepted with its
/// button), see each other online, exchange messages both ways (sent with
/// Enter, end-to-end encrypted, marked delivered); a browser that comes back
/// resumes its session without the password and shows what arrived meanwhile,
/// with its unread count.
#[test]
fn two_browsers_talk_and_a_reload_resumes_the_session() {
    let Some(lab) = Lab::start("two_browsers_talk_and_a_reload_resumes_the_session") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    lab.run(async {
        let ann = lab.browser("ann").await;
        ann.goto(&base).await;
        ann.wait_visible("#login-form").await;
        ann.screenshot("login").await;
        ann.register(&base, "ann").await;
        let ben = lab.browser("ben").await;
        ben.register(&base, "ben").await;

        ann.add_contact("ben").await;
        ann.wait_text("#contacts .state", "waiting for them to add you")
            .await;
        ben.wait_text("#requests", "ann wants to add you").await;
        ben.click_button("#requests", "Accept").await;
        ben.wait_text("#contacts .state", "online").await;
        ann.wait_text("#contacts .state", "online").await;

        ann.open_chat("ben").await;
        ann.wait_text("#chat-security", "End-to-end encrypted")
            .await;
        ann.send("hello ben").await;
        let sent = ann.wait_message("hello ben").await;
        assert_eq!(sent["mine"], true);
        assert_eq!(sent["kind"], "e2e", "{sent}");
        ben.wait_until(
            "an unread count for ann",
            "return document.querySelector('#conversations .badge:not([hidden])') !== null;",
            vec![],
        )
        .await;
        assert_eq!(ben.unread("ann").await, 1);
        ben.open_chat("ann").await;
        let got = ben.wait_message("hello ben").await;
        assert_eq!(got["kind"], "e2e", "{got}");
        assert_eq!(got["mine"], false);
        assert_eq!(ben.unread("ann").await, 0);
        // ben's browser confirmed it (receipts): ann sees it delivered.
        ann.wait_text("#messages .mine .status", "Delivered").await;

        ben.send("hi ann, line one").await;
        ann.wait_message("hi ann, line one").await;
        ann.screenshot("conversation").await;

        // ben closes the tab; ann writes; ben comes back in a new tab:
        // resumed, not logged out.
        let blank = ben.client.new_window(true).await.expect("a new tab");
        ben.client.close_window().await.expect("close the tab");
        ben.client
            .switch_to_window(blank.handle)
            .await
            .expect("switch tabs");
        ann.wait_text("#contacts .state", "offline").await;
        ann.send("while you were away").await;
        ann.wait_message("while you were away").await;
        ben.goto(&base).await;
        ben.wait_text("#connection-text", "Online").await;
        ben.wait_text("#account-name", "ben").await;
        assert_eq!(
            ben.eval(
                "return document.getElementById('login-form').offsetParent === null;",
                vec![]
            )
            .await,
            json!(true),
            "the login form stays hidden: the session resumed"
        );
        // The conversation that was open is open again, with the message.
        let missed = ben.wait_message("while you were away").await;
        assert_eq!(missed["kind"], "e2e");
        ben.wait_message("hello ben").await;

        // A plain reload keeps the session and the conversation too.
        ben.client.refresh().await.expect("reload");
        ben.wait_text("#connection-text", "Online").await;
        ben.wait_message("while you were away").await;

        // At phone width one column shows: the conversation, then (Back)
        // the list.
        ben.client.set_window_size(390, 800).await.expect("resize");
        ben.wait_visible("#back").await;
        ben.screenshot("phone-conversation").await;
        ben.click("#back").await;
        ben.wait_visible("#conversations").await;
        ben.wait_until(
            "the conversation pane hidden",
            "return document.getElementById('conversation').offsetParent === null;",
            vec![],
        )
        .await;
        ann.send("one more").await;
        ben.wait_until(
            "an unread count while the list shows",
            "return document.querySelector('#conversations .badge:not([hidden])') !== null;",
            vec![],
        )
        .await;
        assert_eq!(ben.unread("ann").await, 1);
        ben.screenshot("phone-list").await;

        // Removing a contact takes them off the list.
        ann.click_button("#contacts", "Remove").await;
        ann.wait_until(
            "ben gone from ann's contacts",
            "return document.querySelectorAll('#contacts .contact').length === 0;",
            vec![],
        )
        .await;

        // Log out: the session is gone from the browser (a reload shows the
        // login form); the password logs in again.
        ann.click("#logout").await;
        ann.wait_visible("#login-form").await;
        ann.client.refresh().await.expect("reload");
        ann.wait_visible("#login-form").await;
        ann.wait_text("#connection-text", "Connected").await;
        ann.login(&base, "ann").await;
        ann.wait_text("#account-name", "ann").await;
    });
}

/// The scheme 2 test vector of `client/src/chat/e2e.rs` gives the same
/// ciphertext in the browser (same keys, same nonce), and the browser opens
/// the content `chat` computes; a tampered one fails.
#[test]
fn the_browser_computes_the_shared_e2e_test_vector() {
    let Some(lab) = Lab::start("the_browser_computes_the_shared_e2e_test_vector") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let vector: Value =
        serde_json::from_str(include_str!("../../client/src/chat/e2e_test_vector.json"))
            .expect("the test vector");
    lab.run(async {
        let browser = lab.browser("vector").await;
        browser.goto(&base).await;
        browser.wait_visible("#login-form").await;
        let script = "const [vector, done] = [arguments[0], arguments[arguments.length - 1]];
            (async () => {
              const e2e = await import('./e2e.js');
              const b64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
              // PKCS#8 wrapping of a raw X25519 private key (RFC 8410).
              const pkcs8 = (raw) => new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                  0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20, ...b64(raw)]);
              const secret = (raw) => crypto.subtle.importKey('pkcs8', pkcs8(raw), {name: 'X25519'}, false, ['deriveBits']);
              const alice = await secret(vector.alice_secret);
              const bob = await secret(vector.bob_secret);
              const atAlice = await e2e.deriveConversationKey(alice,
                  await e2e.importPublicKey(vector.bob_public), vector.sender, vector.recipient);
              const atBob = await e2e.deriveConversationKey(bob,
                  await e2e.importPublicKey(vector.alice_public), vector.recipient, vector.sender);
              const sealed = await e2e.sealWithNonce(atAlice, b64(vector.nonce), vector.sender,
                  vector.recipient, vector.plaintext);
              const opened = await e2e.open(atBob, vector.sender, vector.recipient, vector.content_v2);
              let tampered = 'opened';
              try {
                await e2e.open(atBob, vector.recipient, vector.sender, vector.content_v2);
              } catch (error) {
                tampered = error.constructor.name;
              }
              return {sealed, opened, tampered};
            })().then(done, (error) => done({error: String(error)}));";
        let result = browser
            .client
            .execute_async(script, vec![vector.clone()])
            .await
            .expect("run the vector");
        assert_eq!(result["sealed"], vector["content_v2"], "{result}");
        assert_eq!(result["opened"], vector["plaintext"], "{result}");
        assert_eq!(result["tampered"], "Undecryptable", "{result}");
    });
}

/// A browser and `chat` exchange end-to-end encrypted messages both ways;
/// each shows the other's decrypted, and the server's files hold no
/// plaintext of either.
#[test]
fn a_browser_and_chat_exchange_encrypted_messages() {
    let Some(lab) = Lab::start("a_browser_and_chat_exchange_encrypted_messages") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let dir = tempfile::tempdir().unwrap();
    lab.run(async {
        let mut dora = chat_user(&server, dir.path(), "dora");
        let cleo = lab.browser("cleo").await;
        cleo.register(&base, "cleo").await;
        cleo.add_contact("dora").await;
        cleo.open_chat("dora").await;
        cleo.wait_text("#chat-security", "End-to-end encrypted")
            .await;
        cleo.send("browser to chat: the vault code is 4711").await;
        let sent = cleo
            .wait_message("browser to chat: the vault code is 4711")
            .await;
        assert_eq!(sent["kind"], "e2e", "{sent}");
        let line = dora.expect_line("cleo: browser to chat: the vault code is 4711");
        assert!(line.contains("] [e2e] cleo:"), "{line}");

        dora.send("/msg cleo chat to browser: meet behind the old mill");
        let line = dora.expect_line("dora → cleo: chat to browser");
        assert!(line.contains("[e2e]"), "{line}");
        let got = cleo
            .wait_message("chat to browser: meet behind the old mill")
            .await;
        assert_eq!(got["kind"], "e2e", "{got}");
        assert_eq!(got["mine"], false);
        // A plain control message proves the search below would find text.
        dora.send("/msg --plain cleo nothing to hide here");
        cleo.wait_message("nothing to hide here").await;
        drop(dora);
    });
    let stored = server.stored_messages();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored
        .values()
        .any(|content| content == "nothing to hide here"));
    for secret in ["the vault code is 4711", "meet behind the old mill"] {
        assert!(
            !stored.values().any(|content| content.contains(secret)),
            "{secret} stored in the clear: {stored:?}"
        );
        assert!(!data_dir_contains(server.data_dir(), secret), "{secret}");
    }
    assert!(
        stored
            .values()
            .filter(|content| content.starts_with("v2:"))
            .count()
            == 2,
        "both encrypted messages use scheme 2: {stored:?}"
    );
}

/// A group of two browsers and one `chat`: created in a browser, every
/// member sees every message, and a member added later and one leaving are
/// reflected everywhere.
#[test]
fn a_group_of_two_browsers_and_chat() {
    let Some(lab) = Lab::start("a_group_of_two_browsers_and_chat") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let dir = tempfile::tempdir().unwrap();
    lab.run(async {
        let mut hugo = chat_user(&server, dir.path(), "hugo");
        let gina = lab.browser("gina").await;
        gina.register(&base, "gina").await;
        let finn = lab.browser("finn").await;
        finn.register(&base, "finn").await;

        gina.fill("#group-name", "team").await;
        gina.fill("#group-members", "finn").await;
        gina.click("#group-form button[type=submit]").await;
        gina.wait_text("#chat-title", "# team").await;
        gina.wait_text("#group-member-list", "Members: finn, gina")
            .await;
        gina.fill("#add-members", "hugo").await;
        gina.click("#add-members-form button[type=submit]").await;
        gina.wait_text("#group-member-list", "Members: finn, gina, hugo")
            .await;
        hugo.expect_line("* you are in #team");
        finn.open_chat("# team").await;

        gina.send("hello team").await;
        gina.wait_message("hello team").await;
        finn.wait_message("hello team").await;
        hugo.expect_line("#team gina: hello team");

        finn.send("finn here").await;
        gina.wait_message("finn here").await;
        hugo.expect_line("#team finn: finn here");

        let created = hugo.seen.iter().find(|line| line.contains("(id ")).cloned();
        let id = created
            .as_deref()
            .and_then(|line| line.split("(id ").nth(1))
            .and_then(|rest| rest.split(')').next())
            .expect("the group id in chat's output")
            .to_string();
        hugo.send(&format!("/gmsg {id} hugo from the terminal"));
        hugo.expect_line("#team hugo: hugo from the terminal");
        let seen = gina.wait_message("hugo from the terminal").await;
        assert_eq!(seen["kind"], "plain");
        finn.wait_message("hugo from the terminal").await;
        gina.screenshot("group").await;

        finn.click_button("#group-tools", "Leave group").await;
        finn.wait_until(
            "the group gone from finn's list",
            "return ![...document.querySelectorAll('#conversations .name')]
                .some((n) => n.textContent === '# team');",
            vec![],
        )
        .await;
        gina.wait_text("#group-member-list", "Members: gina, hugo")
            .await;
        hugo.expect_line("* finn left #team");
    });
}

/// A message that looks like HTML shows as those characters and runs
/// nothing, sent by `chat` (plain) and by a browser.
#[test]
fn a_message_that_looks_like_html_shows_as_text() {
    let Some(lab) = Lab::start("a_message_that_looks_like_html_shows_as_text") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let dir = tempfile::tempdir().unwrap();
    let attack = "<img src=x onerror=alert(1)>";
    lab.run(async {
        let mut mallory = chat_user(&server, dir.path(), "mallory");
        let iris = lab.browser("iris").await;
        iris.register(&base, "iris").await;
        mallory.send(&format!("/msg --plain iris {attack}"));
        mallory.expect_line(attack);
        iris.open_chat("mallory").await;
        let shown = iris.wait_message(attack).await;
        assert_eq!(shown["kind"], "plain");
        iris.send(attack).await;
        iris.wait_message(attack).await;
        let found = iris
            .eval(
                "return {images: document.querySelectorAll('#messages img').length,
                         texts: [...document.querySelectorAll('#messages .text')].map((e) => e.textContent)};",
                vec![],
            )
            .await;
        assert_eq!(found["images"], 0, "{found}");
        assert_eq!(found["texts"], json!([attack, attack]), "{found}");
        // No alert opened (the page would be blocked on it).
        assert!(
            iris.client.get_alert_text().await.is_err(),
            "an alert is open"
        );
        // A username that looks like HTML is refused before it is sent.
        iris.fill("#add-contact-name", "<b>x</b>").await;
        iris.click("#add-contact-form button[type=submit]").await;
        iris.wait_text("#notice-text", "Usernames are 3 to 32").await;
    });
}

/// The page works under the server's Content-Security-Policy (it connects,
/// and the console shows no CSP violation), and with `--no-web` the server
/// serves no page at all.
#[test]
fn the_page_obeys_the_csp_and_is_absent_with_no_web() {
    let Some(lab) = Lab::start("the_page_obeys_the_csp_and_is_absent_with_no_web") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let without = TestServer::start(&["--no-web"]);
    lab.run(async {
        let kim = lab.browser("kim").await;
        kim.register(&base, "kim").await;
        // Every control has a name a screen reader can say, and can take
        // the keyboard's focus.
        let unnamed = kim
            .eval(
                "return [...document.querySelectorAll('input, textarea, button')]
                    .filter((e) => (e.labels && e.labels.length) ? false
                        : !(e.getAttribute('aria-label') || e.textContent.trim()))
                    .map((e) => e.outerHTML);",
                vec![],
            )
            .await;
        assert_eq!(unnamed, json!([]), "controls without a name");
        kim.eval("document.getElementById('add-contact-name').focus(); return true;", vec![])
            .await;
        let focused = kim
            .eval("return document.activeElement.id;", vec![])
            .await;
        assert_eq!(focused, "add-contact-name");

        // An error is explained in plain words.
        kim.fill("#add-contact-name", "nobody").await;
        kim.click("#add-contact-form button[type=submit]").await;
        kim.wait_text("#notice-text", "There is no user with that name.")
            .await;
        // A line of our own proves the console is being read at all.
        kim.eval("console.error('console-probe'); return true;", vec![])
            .await;
        let console = kim.console().await;
        assert!(
            console.iter().any(|line| line.contains("console-probe")),
            "the browser log is not readable: {console:#?}"
        );
        let violations: Vec<_> = console
            .iter()
            .filter(|line| line.contains("Content Security Policy") || line.contains("Refused to"))
            .collect();
        assert!(violations.is_empty(), "CSP violations: {violations:#?}");
        // And a violation would show: an inline script is refused and reported.
        kim.eval(
            "const s = document.createElement('script'); s.textContent = 'window.ran = 1';
             document.body.append(s); return true;",
            vec![],
        )
        .await;
        let ran = kim.eval("return window.ran === 1;", vec![]).await;
        assert_eq!(ran, json!(false), "an inline script ran under the CSP");
        kim.wait_until_console("Content Security Policy").await;

        kim.goto(&format!("http://127.0.0.1:{}/", without.port))
            .await;
        let page = kim
            .eval(
                "return {form: document.getElementById('login-form') !== null, text: document.body ? document.body.innerText : ''};",
                vec![],
            )
            .await;
        assert_eq!(page["form"], false, "--no-web still serves the page: {page}");
    });
}

/// A TCP forwarder between the browser and the server whose connections
/// the test can cut (and refuse new ones until `resume`): the page, loaded
/// through it, loses its WebSocket as on a dropped network.
struct Cutter {
    port: u16,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<Mutex<Vec<TcpStream>>>,
}

impl Cutter {
    fn start(target: &str) -> Cutter {
        use std::sync::atomic::Ordering;
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the cutter");
        let port = listener.local_addr().expect("cutter address").port();
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (refusing_, streams_) = (refusing.clone(), streams.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if refusing_.load(Ordering::SeqCst) {
                    continue; // dropped at once
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut held = streams_.lock().unwrap();
                held.push(client);
                held.push(server);
            }
        });
        Cutter {
            port,
            refusing,
            streams,
        }
    }

    /// Cuts every forwarded connection and refuses new ones.
    fn cut(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    fn resume(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A dropped connection: the page says it is reconnecting, a message typed
/// meanwhile waits, and once the network is back the page resumes its
/// session, shows what was sent to it meanwhile, and sends the waiting
/// message exactly once.
#[test]
fn a_dropped_connection_reconnects_and_misses_nothing() {
    let Some(lab) = Lab::start("a_dropped_connection_reconnects_and_misses_nothing") else {
        return;
    };
    let server = TestServer::start(&[]);
    let direct = page(&server);
    let authority = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let cutter = Cutter::start(&authority);
    let base = format!("http://127.0.0.1:{}/", cutter.port);
    let dir = tempfile::tempdir().unwrap();
    lab.run(async {
        let mut pete = chat_user(&server, dir.path(), "pete");
        let olga = lab.browser("olga").await;
        olga.register(&base, "olga").await;
        olga.add_contact("pete").await;
        olga.open_chat("pete").await;
        pete.send("/msg olga before the cut");
        olga.wait_message("before the cut").await;

        cutter.cut();
        olga.wait_text("#connection-text", "Reconnecting").await;
        olga.screenshot("reconnecting").await;
        pete.send("/msg olga during the cut");
        pete.expect_line("pete → olga: during the cut");
        olga.send("typed while offline").await;
        let waiting = olga.wait_message("typed while offline").await;
        assert!(
            waiting["status"]
                .as_str()
                .is_some_and(|status| status.contains("Waiting for the connection")),
            "{waiting}"
        );

        cutter.resume();
        olga.wait_text("#connection-text", "Online").await;
        olga.wait_message("during the cut").await;
        pete.expect_line("olga: typed while offline");
        olga.wait_text("#messages .mine .status", "Sent").await;
    });
    let stored = server.stored_messages();
    // Before, during, and the waiting one once (all three encrypted).
    assert_eq!(stored.len(), 3, "{stored:?}");
}

/// History paging: after a reload the conversation shows its newest page,
/// and "Load older messages" (or scrolling up) brings the rest, in order.
#[test]
fn older_messages_page_in_from_history() {
    let Some(lab) = Lab::start("older_messages_page_in_from_history") else {
        return;
    };
    let server = TestServer::start(&[]);
    let base = page(&server);
    let dir = tempfile::tempdir().unwrap();
    lab.run(async {
        let mut quinn = chat_user(&server, dir.path(), "quinn");
        let rosa = lab.browser("rosa").await;
        rosa.register(&base, "rosa").await;
        rosa.add_contact("quinn").await;
        for number in 1..=60 {
            quinn.send(&format!("/msg --plain rosa old {number:02}"));
        }
        quinn.expect_line("quinn → rosa: old 60");
        rosa.open_chat("quinn").await;
        rosa.wait_message("old 60").await;
        rosa.client.refresh().await.expect("reload");
        rosa.wait_text("#connection-text", "Online").await;
        rosa.wait_message("old 60").await;
        let shown = rosa.texts("#messages .message .text").await;
        assert_eq!(
            shown.len(),
            50,
            "one History page after a reload: {shown:?}"
        );
        assert_eq!(shown[0], "old 11");
        rosa.click("#load-older").await;
        rosa.wait_message("old 01").await;
        let shown = rosa.texts("#messages .message .text").await;
        let expected: Vec<String> = (1..=60).map(|number| format!("old {number:02}")).collect();
        assert_eq!(shown, expected);
        rosa.wait_until(
            "the load-older button gone",
            "return document.getElementById('load-older').hidden;",
            vec![],
        )
        .await;
    });
}
