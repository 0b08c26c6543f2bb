//! Measures the storage thread's cost per message in isolation: the SQLite
//! backend alone, fed batches of `StoreMessage` commands as the loop would,
//! on a temp database. No sockets, no JSON.
//!
//! `cargo run --release -p server --example storage_bench -- [messages] [batch] [users]`

use std::time::Instant;

use server::completion::{ConnId, Requester};
use server::password::hash_password;
use server::storage::sqlite::SqliteBackend;
use server::storage::{begin_run, Backend, Command, NewMessage, Reply};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<i64>().unwrap_or(0));
    let messages = args.next().filter(|n| *n > 0).unwrap_or(200_000);
    let batch = args.next().filter(|n| *n > 0).unwrap_or(1_000);
    let users = args.next().filter(|n| *n > 1).unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("storage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut backend = SqliteBackend::open(&dir.join("chat.db"), false).expect("open");
    begin_run(&mut backend).expect("begin a run");
    let to = Requester::anonymous(ConnId { slot: 0, serial: 1 });
    let mut ids = Vec::new();
    for i in 0..users {
        let replies = backend.execute(vec![Command::CreateUser {
            to: to.clone(),
            username: format!("user{i}"),
            email: format!("user{i}@example.com"),
            hash: hash_password("password123", 1),
            now: 0,
            shared: None,
        }]);
        if let [Reply::UserCreated {
            user_id: Some(id), ..
        }] = replies[..]
        {
            ids.push(id);
        }
    }
    let started = Instant::now();
    let mut next_id = 1;
    while next_id <= messages {
        let commands = (0..batch.min(messages - next_id + 1))
            .map(|k| {
                let id = next_id + k;
                let sender = ids[(id as usize) % ids.len()];
                let receiver = ids[(id as usize + 1) % ids.len()];
                Command::StoreMessage {
                    to: to.clone(),
                    ticket: id as u64,
                    client_message_id: Some(format!("c{id}")),
                    message: NewMessage {
                        message_id: id,
                        sender_id: sender,
                        receiver_id: Some(receiver),
                        group_id: None,
                        content: "t=123456789 s=42 hello there".into(),
                        is_encrypted: false,
                        time: 1_700_000_000,
                        delivered: true,
                    },
                }
            })
            .collect::<Vec<_>>();
        next_id += commands.len() as i64;
        let replies = backend.execute(commands);
        assert!(replies
            .iter()
            .all(|r| matches!(r, Reply::MessageStored { .. })));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{messages} messages, batch {batch}, {users} users: {seconds:.2} s, {:.0} messages/s, {:.2} µs/message",
        messages as f64 / seconds,
        seconds * 1e6 / messages as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
