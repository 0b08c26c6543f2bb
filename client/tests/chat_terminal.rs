//! `chat` at a terminal, driven through a pseudo-terminal whose screen is
//! read back as a person would see it: incoming messages leave the line
//! being typed intact, Tab completes commands and contact names, and Up
//! recalls the previous command after a restart.

mod common;

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::{chat_command, run_script, Server, STEP_TIMEOUT};
use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

const ROWS: u16 = 24;
const COLUMNS: u16 = 100;

/// `chat` running in a pseudo-terminal, its output kept as a screen.
struct Terminal {
    screen: Arc<Mutex<vt100::Parser>>,
    keyboard: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn Child + Send + Sync>,
    // Kept open for as long as the child runs.
    _master: Box<dyn MasterPty + Send>,
}

impl Terminal {
    /// Starts `chat` for `url` with its session (and history) in `session`.
    fn start(url: &str, session: &Path) -> Terminal {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLUMNS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pseudo-terminal");
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_chat"));
        command.args(["--url", url, "--session-file"]);
        command.arg(session);
        command.env("TZ", "UTC");
        command.env("TERM", "xterm");
        let child = pair
            .slave
            .spawn_command(command)
            .expect("start chat in the pseudo-terminal");
        drop(pair.slave);
        let reader = pair.master.try_clone_reader().expect("pty reader");
        let keyboard = Arc::new(Mutex::new(pair.master.take_writer().expect("pty writer")));
        let size = |n: u16| NonZeroU16::new(n).expect("a screen has rows and columns");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(size(ROWS), size(COLUMNS), 0)));
        let (screen_copy, keyboard_copy) = (Arc::clone(&screen), Arc::clone(&keyboard));
        thread::spawn(move || show(reader, &screen_copy, &keyboard_copy));
        Terminal {
            screen,
            keyboard,
            child,
            _master: pair.master,
        }
    }

    /// Types `keys` (text, or control characters such as "\t" and "\r").
    fn type_keys(&self, keys: &str) {
        let mut keyboard = self.keyboard.lock().unwrap_or_else(PoisonError::into_inner);
        keyboard.write_all(keys.as_bytes()).expect("type");
        keyboard.flush().expect("type");
    }

    /// Waits until the screen satisfies `check`; fails with the screen.
    fn wait_for(&self, what: &str, check: impl Fn(&Screen) -> bool) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}; it shows:\n{}\n(cursor line: {:?})",
                screen.text,
                screen.cursor_line
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the line with the cursor (the input line) reads `line`.
    fn wait_for_input_line(&self, line: &str) {
        self.wait_for(&format!("the input line {line:?}"), |screen| {
            screen.cursor_line.trim_end() == line
        });
    }

    fn screen(&self) -> Screen {
        let parser = self.screen.lock().unwrap_or_else(PoisonError::into_inner);
        let screen = parser.screen();
        let (row, _) = screen.cursor_position();
        let cursor_line = screen
            .rows(0, COLUMNS)
            .nth(usize::from(row))
            .unwrap_or_default();
        Screen {
            text: screen.contents(),
            cursor_line,
        }
    }

    /// Waits for `chat` to exit.
    fn wait_for_exit(mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.child.try_wait().expect("wait for chat").is_none() {
            assert!(Instant::now() < deadline, "chat did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// What the screen shows.
struct Screen {
    text: String,
    cursor_line: String,
}

/// Feeds the program's output to the screen, and answers its cursor
/// position queries as a terminal does (the line editor asks one before
/// each prompt).
fn show(
    mut reader: Box<dyn Read + Send>,
    screen: &Mutex<vt100::Parser>,
    keyboard: &Mutex<Box<dyn Write + Send>>,
) {
    let mut buffer = [0u8; 4096];
    while let Ok(read) = reader.read(&mut buffer) {
        if read == 0 {
            return;
        }
        let chunk = &buffer[..read];
        let mut parser = screen.lock().unwrap_or_else(PoisonError::into_inner);
        parser.process(chunk);
        if chunk.windows(4).any(|window| window == b"\x1b[6n") {
            let (row, column) = parser.screen().cursor_position();
            let answer = format!("\x1b[{};{}R", row + 1, column + 1);
            let mut keyboard = keyboard.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = keyboard.write_all(answer.as_bytes());
            let _ = keyboard.flush();
        }
    }
}

/// Registers `name` (password `password-NAME`) and runs `commands` after
/// logging in, in a script; the session is saved in `dir/NAME.session`.
fn script(server: &Server, dir: &Path, name: &str, commands: &str) {
    let session = dir.join(format!("{name}.session"));
    let done = run_script(
        chat_command(&server.url(), &session),
        &format!("/login {name} password-{name}\n{commands}"),
    );
    assert_eq!(done.code, 0, "{done:?}");
}

/// A person types while messages arrive, completes with Tab, sends, quits,
/// and finds the command again with Up after starting `chat` anew.
#[test]
fn the_line_editor_keeps_typing_intact_completes_and_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for name in ["alice", "bob"] {
        let done = run_script(
            chat_command(&server.url(), &dir.path().join("setup.session")),
            &format!("/register {name} {name}@example.com password-{name}\n"),
        );
        assert_eq!(done.code, 0, "{done:?}");
    }
    script(&server, dir.path(), "bob", "/add alice\n");
    script(&server, dir.path(), "alice", "/add bob\n");
    let alice_session = dir.path().join("alice.session");

    let terminal = Terminal::start(&server.url(), &alice_session);
    terminal.wait_for_input_line("alice>");
    terminal.type_keys("/hi\t");
    terminal.wait_for_input_line("alice> /history");
    // Ctrl-U clears the line; the contact list fetched after the login
    // completes bob's name.
    terminal.type_keys("\x15/msg b\t");
    terminal.wait_for_input_line("alice> /msg bob");
    terminal.type_keys("draft being typed");
    terminal.wait_for_input_line("alice> /msg bob draft being typed");

    script(
        &server,
        dir.path(),
        "bob",
        "/msg alice first while typing\n/msg alice second while typing\n",
    );
    terminal.wait_for("both incoming messages", |screen| {
        screen.text.contains("bob: first while typing")
            && screen.text.contains("bob: second while typing")
    });
    terminal.wait_for_input_line("alice> /msg bob draft being typed");

    terminal.type_keys("\r");
    terminal.wait_for("the sent message", |screen| {
        screen
            .text
            .lines()
            .any(|line| line.contains("alice → bob: draft being typed"))
    });
    terminal.wait_for_input_line("alice>");
    terminal.type_keys("/quit\r");
    terminal.wait_for_exit();

    let terminal = Terminal::start(&server.url(), &alice_session);
    terminal.wait_for_input_line("alice>");
    terminal.type_keys("\x1b[A");
    terminal.wait_for_input_line("alice> /quit");
    terminal.type_keys("\x1b[A");
    terminal.wait_for_input_line("alice> /msg bob draft being typed");
    // Ctrl-U, then Ctrl-D on the empty line ends chat.
    terminal.type_keys("\x15\x04");
    terminal.wait_for_exit();
}
