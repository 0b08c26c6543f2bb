use super::*;
use protocol::server::DeliveryReceipt;
use protocol::ErrorType;

/// A stamped message carries its send time and sequence, padded, and
/// the parser reads them back.
#[test]
fn content_round_trips_through_the_parser() {
    let mut sender = Senders::new(60, false);
    let index = sender.add(1, Target::User("bob".into()), true);
    let member = &mut sender.members[index];
    member.stamp(7, 123, &sender.padding);
    let ClientMessage::Message(body) = &member.message else {
        panic!("not a Message");
    };
    assert_eq!(body.content.len(), "t=123 s=7".len() + 15);
    assert_eq!(body.message_id.as_deref(), Some("7"));
    assert_eq!(parse_content(&body.content), Some((123, 7)));
    assert_eq!(parse_content("t=123 s=7"), Some((123, 7)));
    assert_eq!(parse_content("hello"), None);
    assert_eq!(parse_content("t=x s=1"), None);
}

/// Lookups work in any order, and answered messages leave the ring.
#[test]
fn in_flight_finds_any_message_and_forgets_answered_ones() {
    let mut in_flight = InFlight::default();
    for seq in 0..4 {
        in_flight.push(seq, 100 + seq);
    }
    assert_eq!(in_flight.take(2), Some(102), "out of order");
    assert_eq!(in_flight.take(2), None, "answered twice");
    assert_eq!(in_flight.take(0), Some(100));
    assert_eq!(in_flight.first_seq, 1, "the answered front is dropped");
    assert_eq!(in_flight.take(9), None, "never sent");
    assert_eq!(in_flight.len, 2);
    assert_eq!(in_flight.take(1), Some(101));
    assert_eq!(in_flight.first_seq, 3, "1 and the answered 2 are dropped");
    in_flight.push(4, 104);
    assert_eq!(in_flight.take(3), Some(103));
    assert_eq!(in_flight.take(4), Some(104));
    assert_eq!((in_flight.len, in_flight.sent_at.len()), (0, 0));
}

fn ack(conn: ConnId, seq: u64, request_id: Option<u64>) -> PoolEvent {
    PoolEvent::Frame(
        conn,
        ServerMessage::Ack(Ack {
            message_id: seq as i64 + 100,
            client_message_id: Some(seq.to_string()),
        }),
        request_id,
    )
}

fn refusal(conn: ConnId, request_id: Option<u64>) -> PoolEvent {
    PoolEvent::Frame(
        conn,
        ServerMessage::error(ErrorType::RateLimited, "slow down", Some(11)),
        request_id,
    )
}

/// A refusal that overtakes the Acks of earlier messages answers exactly
/// the message it names, and only that one.
#[test]
fn a_refusal_answers_the_message_its_request_id_names() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, false);
    let index = senders.add(5, Target::User("bob".into()), true);
    for at in [10, 20, 30] {
        senders.record_sent(index, at);
    }
    senders.on_event(&refusal(5, Some(1)), 40, &progress);
    assert_eq!(senders.unanswered(), 2);
    senders.on_event(&ack(5, 2, Some(2)), 50, &progress);
    senders.on_event(&ack(5, 0, Some(0)), 60, &progress);
    assert_eq!(senders.unanswered(), 0);
    assert!(senders.was_acked(index, 0) && senders.was_acked(index, 2));
    assert!(!senders.was_acked(index, 1));
    let tally = senders.finish();
    let counts = tally.counts;
    assert_eq!(counts.acked, 2);
    assert_eq!(tally.ack.count(), 2);
    let kinds: Vec<_> = counts.errors.into_iter().collect();
    assert_eq!(kinds, vec![("rate_limited".to_string(), 1)]);
}

/// Answers without a request id, or naming no message in flight, answer
/// nothing: the message stays unanswered.
#[test]
fn answers_without_a_known_request_id_answer_nothing() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, false);
    let index = senders.add(5, Target::Group(9), true);
    senders.record_sent(index, 10);
    senders.on_event(&ack(5, 0, None), 20, &progress);
    senders.on_event(&ack(5, 0, Some(7)), 20, &progress);
    senders.on_event(&refusal(5, None), 20, &progress);
    assert_eq!(senders.unanswered(), 1);
    senders.on_event(&ack(5, 3, Some(0)), 30, &progress);
    assert_eq!(senders.unanswered(), 0, "the request id decides");
    let counts = senders.finish().counts;
    assert_eq!(counts.errors.get("ack for no message in flight"), Some(&2));
    assert_eq!(counts.errors.get("rate_limited"), Some(&1));
    assert_eq!(counts.errors.get("ack names another message"), Some(&1));
    assert_eq!(counts.acked, 1);
}

fn message(to: ConnId, message_id: i64) -> PoolEvent {
    PoolEvent::Frame(
        to,
        ServerMessage::Message(Delivered {
            message_id,
            source_id: "bob".into(),
            dest_id: Some("ann".into()),
            group_id: None,
            content: "t=1 s=0".into(),
            is_encrypted: false,
            time: 0,
        }),
        None,
    )
}

fn receipt(to: ConnId, username: &str, through: i64) -> PoolEvent {
    let receipt = DeliveryReceipt {
        username: username.into(),
        through,
    };
    PoolEvent::Frame(to, ServerMessage::Delivered(receipt), None)
}

/// With receipts, a batch of messages lists its connection once for one
/// confirmation through the highest id; an id below an earlier one is an
/// error and never lowers it.
#[test]
fn a_batch_lists_each_receiving_connection_once() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, true);
    let ann = senders.add(5, Target::User("bob".into()), true);
    let bob = senders.add(6, Target::User("ann".into()), true);
    for id in [3, 7, 9] {
        senders.on_event(&message(5, id), 0, &progress);
    }
    senders.on_event(&message(6, 8), 0, &progress);
    assert_eq!(senders.to_confirm, vec![ann, bob]);
    assert_eq!(senders.members[ann].holding.due(), Some(9));
    senders.on_event(&message(5, 4), 0, &progress);
    assert_eq!(senders.to_confirm.len(), 2, "listed once");
    assert_eq!(senders.members[ann].holding.due(), Some(9));
    let counts = senders.finish().counts;
    assert_eq!(
        counts.errors.get("message id below an earlier one"),
        Some(&1)
    );
}

/// Without receipts nothing is listed for confirmation.
#[test]
fn without_receipts_nothing_is_confirmed() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, false);
    senders.add(5, Target::User("bob".into()), true);
    senders.on_event(&message(5, 3), 0, &progress);
    assert!(senders.to_confirm.is_empty());
    senders.on_event(&receipt(5, "bob", 3), 0, &progress);
    let counts = senders.finish().counts;
    assert_eq!(counts.errors.get("Delivered without receipts"), Some(&1));
}

/// A Delivered covers the acked messages to the user it names up to its
/// `through`, each once, with a send → Delivered latency; the grace
/// period waits for the rest.
#[test]
fn a_delivered_covers_acked_messages_to_its_user() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, true);
    let index = senders.add(5, Target::User("bob".into()), true);
    for at in [10, 20, 30] {
        senders.record_sent(index, at);
    }
    for seq in 0..3 {
        // Server ids 100, 101, 102.
        senders.on_event(&ack(5, seq, Some(seq)), 40, &progress);
    }
    assert_eq!(senders.unreceipted_open(), 3);
    senders.on_event(&receipt(5, "bob", 101), 1_000, &progress);
    senders.on_event(&receipt(5, "bob", 101), 1_000, &progress);
    senders.on_event(&receipt(5, "carl", 102), 1_000, &progress);
    assert_eq!(senders.unreceipted_open(), 1);
    let tally = senders.finish();
    assert_eq!(tally.counts.receipts, 3);
    assert_eq!(tally.counts.receipted, 2);
    assert_eq!(tally.unreceipted, 1);
    assert_eq!(tally.receipt.count(), 2);
    let errors = &tally.counts.errors;
    assert_eq!(errors.get("Delivered for a user not written to"), Some(&1));
}

/// An Error answering a confirmation is named apart and answers no
/// message.
#[test]
fn a_refused_confirmation_answers_no_message() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, true);
    let index = senders.add(5, Target::User("bob".into()), true);
    senders.record_sent(index, 10);
    senders.on_event(&refusal(5, Some(RECEIVED_REQUEST_ID)), 20, &progress);
    assert_eq!(senders.unanswered(), 1);
    let counts = senders.finish().counts;
    assert_eq!(
        counts.errors.get("Received refused: rate_limited"),
        Some(&1)
    );
}

/// Events of connections that are no member's are left alone; a close
/// marks its member closed.
#[test]
fn events_of_other_connections_are_foreign() {
    let progress = Progress::default();
    let mut senders = Senders::new(0, false);
    senders.add(5, Target::User("bob".into()), true);
    let other = ack(6, 0, Some(0));
    let routed = senders.on_event(&other, 0, &progress);
    assert!(matches!(routed, Routed::Foreign));
    let closed = PoolEvent::Closed(5, "gone".into());
    assert!(matches!(
        senders.on_event(&closed, 0, &progress),
        Routed::Handled
    ));
    assert!(!senders.is_open(0));
}
