//! A property test of the delivery bookkeeping in storage against a simple
//! model: whatever sequence of stores, takes, put-backs, confirmations and
//! departures, the offline queue a login is pushed is exactly "the 1:1
//! messages no device took, and the group messages past the member's
//! cursor", and the cursor only moves the way the model says, whenever the
//! write-behind index passes run between the steps. The same
//! property is checked on each backend: SQLite, and PostgreSQL where one
//! answers (fewer cases: each needs a schema of its own).

use proptest::prelude::*;

use super::postgres::test_schema::TestSchema;
use super::postgres::PostgresBackend;
use super::sqlite::SqliteBackend;
use super::{Backend, Command, GroupsTaken, NewMessage, Reply, StoredMessage};
use crate::completion::{ConnId, Requester};
use crate::password::hash_password;

const CONN: Requester = Requester::anonymous(ConnId { slot: 0, serial: 1 });

/// One step of the bookkeeping, with choices as small numbers that the
/// runner maps onto what exists.
#[derive(Clone, Debug)]
enum Step {
    /// A 1:1 message to the recipient, stored as taken or not.
    Direct { taken: bool },
    /// A group message.
    Group,
    /// A device wrote out the message `pick` (1:1 only).
    MarkTaken { pick: usize },
    /// A departing device had not written from message `pick` on.
    PutBack { pick: usize },
    /// A receipts device confirmed through message `pick`.
    Confirm { pick: usize },
    /// A device without receipts left, having taken group messages in
    /// `from..=through` (as picks).
    Depart { from: usize, through: usize },
    /// This many write-behind index passes ran (one slice each on SQLite).
    IndexPasses { passes: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<bool>().prop_map(|taken| Step::Direct { taken }),
        2 => Just(Step::Group),
        1 => (0usize..64).prop_map(|pick| Step::MarkTaken { pick }),
        1 => (0usize..64).prop_map(|pick| Step::PutBack { pick }),
        1 => (0usize..64).prop_map(|pick| Step::Confirm { pick }),
        1 => (0usize..64, 0usize..64).prop_map(|(from, through)| Step::Depart { from, through }),
        1 => (1usize..=8).prop_map(|passes| Step::IndexPasses { passes }),
    ]
}

/// What the bookkeeping should say.
#[derive(Default)]
struct Model {
    /// Every message: (id, is_group, taken) — `taken` for 1:1 only.
    messages: Vec<(i64, bool, bool)>,
    cursor: i64,
}

impl Model {
    fn id(&self, pick: usize) -> Option<i64> {
        (!self.messages.is_empty()).then(|| self.messages[pick % self.messages.len()].0)
    }

    fn queue(&self) -> Vec<i64> {
        self.messages
            .iter()
            .filter(|(id, group, taken)| if *group { *id > self.cursor } else { !taken })
            .map(|(id, _, _)| *id)
            .collect()
    }
}

/// What keeps a fixture's database alive until it is dropped.
enum Place {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { _schema: TestSchema },
}

struct Fixture {
    backend: Box<dyn Backend>,
    /// After `backend`: the database outlives its connection.
    _place: Place,
    sender: i64,
    recipient: i64,
    group_id: i64,
    next_id: i64,
}

impl Fixture {
    fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(&dir.path().join("chat.db"), false).unwrap();
        Fixture::new(Box::new(backend), Place::Sqlite { _dir: dir })
    }

    /// On a fresh PostgreSQL schema, or `None` (skipped) without one.
    fn postgres() -> Option<Fixture> {
        let schema = TestSchema::create("the_queue_is_what_no_device_took_on_postgres")?;
        let backend = PostgresBackend::open(&schema.url, false).unwrap();
        Some(Fixture::new(
            Box::new(backend),
            Place::Postgres { _schema: schema },
        ))
    }

    fn new(mut backend: Box<dyn Backend>, place: Place) -> Fixture {
        super::begin_run(backend.as_mut()).unwrap();
        let sender = create_user(backend.as_mut(), "alice");
        let recipient = create_user(backend.as_mut(), "bob");
        let replies = backend.execute(vec![Command::CreateGroup {
            to: CONN,
            name: "g".into(),
            member_ids: vec![sender, recipient],
            now: 1,
        }]);
        let [Reply::GroupChanged { group, .. }] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        Fixture {
            group_id: group.group_id,
            _place: place,
            backend,
            sender,
            recipient,
            next_id: 1,
        }
    }

    fn store(&mut self, group: bool, taken: bool) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.backend.execute(vec![Command::StoreMessage {
            to: CONN,
            ticket: 1,
            client_message_id: None,
            message: NewMessage {
                message_id: 0,
                sender_id: self.sender,
                receiver_id: (!group).then_some(self.recipient),
                group_id: group.then_some(self.group_id),
                content: format!("m{id}"),
                is_encrypted: false,
                time: 100,
                delivered: taken || group,
            },
        }]);
        id
    }

    fn run(&mut self, command: Command) {
        self.backend.execute(vec![command]);
    }

    /// The whole queue, taken page by page as a login does.
    fn queue(&mut self) -> Vec<i64> {
        let mut taken: Vec<i64> = Vec::new();
        loop {
            let replies = self.backend.execute(vec![Command::TakeQueue {
                to: CONN,
                user_id: self.recipient,
                queue_before: self.next_id,
                after: taken.last().copied().unwrap_or(0),
                since: None,
                include_groups: true,
            }]);
            let [Reply::QueueChunk {
                queued,
                more_queued,
                ..
            }] = replies.as_slice()
            else {
                panic!("{replies:?}");
            };
            taken.extend(queued.iter().map(|m: &StoredMessage| m.message_id));
            if !more_queued {
                return taken;
            }
        }
    }
}

fn create_user(backend: &mut dyn Backend, name: &str) -> i64 {
    let replies = backend.execute(vec![Command::CreateUser {
        to: CONN,
        username: name.into(),
        email: format!("{name}@example.com"),
        hash: hash_password("password123", 1),
        now: 1,
        shared: None,
    }]);
    match replies.as_slice() {
        [Reply::UserCreated {
            user_id: Some(id), ..
        }] => *id,
        other => panic!("{other:?}"),
    }
}

fn apply(fixture: &mut Fixture, model: &mut Model, step: &Step) {
    let user_id = fixture.recipient;
    match *step {
        Step::Direct { taken } => {
            let id = fixture.store(false, taken);
            model.messages.push((id, false, taken));
        }
        Step::Group => {
            let id = fixture.store(true, false);
            model.messages.push((id, true, false));
        }
        Step::MarkTaken { pick } => {
            let Some(id) = model.id(pick) else { return };
            fixture.run(Command::MarkDelivered {
                user_id,
                message_ids: vec![id],
            });
            for message in &mut model.messages {
                if message.0 == id && !message.1 {
                    message.2 = true;
                }
            }
        }
        Step::PutBack { pick } => {
            let Some(from) = model.id(pick) else { return };
            fixture.run(Command::Requeue {
                user_id,
                from_message_id: from,
            });
            for message in &mut model.messages {
                if message.0 >= from && !message.1 {
                    message.2 = false;
                }
            }
        }
        Step::Confirm { pick } => {
            let Some(through) = model.id(pick) else {
                return;
            };
            fixture.run(Command::Confirm {
                user_id,
                username: "bob".into(),
                session_hash: "no-such-session".into(),
                through,
            });
            for message in &mut model.messages {
                if message.0 <= through && !message.1 {
                    message.2 = true;
                }
            }
            model.cursor = model.cursor.max(through);
        }
        Step::Depart { from, through } => {
            let (Some(from), Some(through)) = (model.id(from), model.id(through)) else {
                return;
            };
            fixture.run(Command::ConnectionLost {
                user_id,
                username: "bob".into(),
                session_hash: "h".into(),
                last: false,
                groups_taken: Some(GroupsTaken { from, through }),
                now: 1,
            });
            if model.cursor >= from - 1 && model.cursor < through {
                model.cursor = through;
            }
        }
        Step::IndexPasses { passes } => {
            for _ in 0..passes {
                fixture.backend.index_pass_now();
            }
        }
    }
}

/// Runs `steps` on `fixture` and on the model, comparing the queue after
/// each.
fn check(mut fixture: Fixture, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for step in steps {
        apply(&mut fixture, &mut model, step);
        prop_assert_eq!(fixture.queue(), model.queue(), "after {:?}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_queue_is_what_no_device_took(steps in proptest::collection::vec(step(), 1..40)) {
        check(Fixture::sqlite(), &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn the_queue_is_what_no_device_took_on_postgres(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        if let Some(fixture) = Fixture::postgres() {
            check(fixture, &steps)?;
        }
    }
}
