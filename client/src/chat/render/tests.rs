use super::*;
use protocol::server::{GroupInfo, Groups, SessionInfo};

const NOW: i64 = 1_709_214_330; // 2024-02-29 13:45:30 UTC

fn stamper() -> Stamper {
    Stamper::utc_at(NOW)
}

fn delivered(from: &str, to: &str, content: &str) -> Delivered {
    Delivered {
        message_id: 7,
        source_id: from.into(),
        dest_id: Some(to.into()),
        group_id: None,
        content: content.into(),
        is_encrypted: false,
        time: NOW - 143,
    }
}

#[test]
fn incoming_and_own_messages() {
    let incoming = delivered("bob", "alice", "hello");
    assert_eq!(
        message_line(&incoming, &Opened::AsSent, Some("alice"), None, &stamper()),
        "[13:43:07] bob: hello"
    );
    let own = delivered("alice", "bob", "hi");
    assert_eq!(
        message_line(&own, &Opened::AsSent, Some("alice"), None, &stamper()),
        "[13:43:07] alice → bob: hi"
    );
    let mut group = delivered("bob", "", "standup");
    group.dest_id = None;
    group.group_id = Some(3);
    assert_eq!(
        message_line(
            &group,
            &Opened::AsSent,
            Some("alice"),
            Some("team"),
            &stamper()
        ),
        "[13:43:07] #team bob: standup"
    );
    assert_eq!(
        message_line(&group, &Opened::AsSent, Some("alice"), None, &stamper()),
        "[13:43:07] #3 bob: standup"
    );
    group.source_id = "alice".into();
    assert_eq!(
        message_line(
            &group,
            &Opened::AsSent,
            Some("alice"),
            Some("team"),
            &stamper()
        ),
        "[13:43:07] #team alice: standup"
    );
    // A name from the network cannot drive the terminal either.
    assert_eq!(
        message_line(&group, &Opened::AsSent, None, Some("a\x1bb"), &stamper()),
        "[13:43:07] #a\\u{1b}b alice: standup"
    );
}

#[test]
fn content_cannot_break_the_line_or_drive_the_terminal() {
    let sneaky = delivered("bob", "alice", "two\nlines\x1b[2J");
    let line = message_line(&sneaky, &Opened::AsSent, Some("alice"), None, &stamper());
    assert_eq!(line, "[13:43:07] bob: two\\nlines\\u{1b}[2J");
    let mut secret = delivered("bob", "alice", "b64==");
    secret.is_encrypted = true;
    assert!(
        message_line(&secret, &Opened::AsSent, None, None, &stamper())
            .ends_with("] bob: [encrypted message could not be decrypted]")
    );
    let opened = Opened::Decrypted("psst\x1b[2J".into());
    assert!(message_line(&secret, &opened, None, None, &stamper())
        .ends_with("] [e2e] bob: psst\\u{1b}[2J"));
}

#[test]
fn history_is_a_conversation_with_notes_for_empty_and_more() {
    let page = History {
        chat_id: "bob".into(),
        data: vec![
            delivered("alice", "bob", "hi"),
            Delivered {
                time: 1_640_995_200,
                ..delivered("bob", "alice", "old")
            },
        ],
        has_more: true,
    };
    assert_eq!(
        history_lines(&page, &[], None, &stamper()),
        vec![
            "[13:43:07] alice: hi".to_string(),
            "[2022-01-01 00:00:00] bob: old".to_string(),
            "(older messages with bob exist; /history bob 200 shows more)".to_string(),
        ]
    );
    let empty = History {
        chat_id: "bob".into(),
        data: vec![],
        has_more: false,
    };
    assert_eq!(
        history_lines(&empty, &[], None, &stamper()),
        vec!["no messages with bob yet"]
    );
}

#[test]
fn group_history_is_titled_by_the_group() {
    let mut message = delivered("bob", "", "standup");
    message.dest_id = None;
    message.group_id = Some(5);
    let page = History {
        chat_id: "g:5".into(),
        data: vec![message],
        has_more: true,
    };
    assert_eq!(
        history_lines(&page, &[], Some("team"), &stamper()),
        vec![
            "[13:43:07] bob: standup",
            "(older messages in #team exist; /history #5 200 shows more)",
        ]
    );
    let empty = History {
        chat_id: "g:5".into(),
        data: vec![],
        has_more: false,
    };
    assert_eq!(
        history_lines(&empty, &[], None, &stamper()),
        vec!["no messages in #5 yet"]
    );
    assert_eq!(group_chat_id("g:5"), Some(5));
    assert_eq!(group_chat_id("bob"), None);
}

fn team(members: &[&str]) -> GroupInfo {
    GroupInfo {
        group_id: 3,
        name: "team".into(),
        members: members.iter().map(|name| name.to_string()).collect(),
    }
}

#[test]
fn group_answers_and_pushes() {
    let group = team(&["alice", "bob", "carol"]);
    assert_eq!(group_summary(&group), "#team (id 3): alice, bob, carol");
    assert_eq!(
        group_created_line(&group),
        "created #team (id 3): alice, bob, carol"
    );
    assert_eq!(
        group_added_line(&["carol".into()], &group),
        "added carol to #team (id 3): alice, bob, carol"
    );
    assert_eq!(group_left_line(3, Some("team")), "left #team (id 3)");
    assert_eq!(group_left_line(3, None), "left #3 (id 3)");
    assert_eq!(
        group_info_event(None, &group),
        "* you are in #team (id 3): alice, bob, carol"
    );
    let before = team(&["alice", "bob"]);
    assert_eq!(
        group_info_event(Some(&before), &group),
        "* carol joined #team (id 3): alice, bob, carol"
    );
    assert_eq!(
        group_info_event(Some(&group), &before),
        "* carol left #team (id 3): alice, bob"
    );
    assert_eq!(
        group_info_event(Some(&team(&["alice", "dave"])), &before),
        "* bob joined and dave left #team (id 3): alice, bob"
    );
    assert_eq!(
        group_info_event(Some(&group), &group),
        "* you are in #team (id 3): alice, bob, carol"
    );
}

#[test]
fn groups_list_and_unasked_changes() {
    let ops = GroupInfo {
        group_id: 4,
        name: "ops".into(),
        members: vec!["alice".into()],
    };
    let groups = Groups {
        data: vec![team(&["alice", "bob"]), ops.clone()],
    };
    assert_eq!(
        groups_lines(&groups),
        vec![
            "you are in 2 groups:",
            "  #team (id 3): alice, bob",
            "  #ops (id 4): alice",
        ]
    );
    assert_eq!(
        groups_lines(&Groups { data: vec![] }),
        vec!["you are in no groups; /group create NAME USER... starts one"]
    );
    let previous = vec![team(&["alice", "bob"])];
    let now = Groups { data: vec![ops] };
    assert_eq!(
        groups_changed_events(&previous, &now),
        vec![
            "* you are no longer in #team (id 3)",
            "* you are in #ops (id 4): alice",
        ]
    );
    assert!(groups_changed_events(
        &previous,
        &Groups {
            data: previous.clone()
        }
    )
    .is_empty());
}

#[test]
fn group_errors_in_plain_words() {
    let error = |error_type| Error {
        error_type,
        detail: "whatever the server says".into(),
        ref_tag: Some(11),
    };
    let message = Asked::GroupMessage {
        group_id: 5,
        label: "#5".into(),
        text: "hi".into(),
    };
    assert_eq!(
        error_failure(Some(&message), &error(ErrorType::Forbidden)),
        "message to #5 not sent: you are not a member of group 5"
    );
    assert_eq!(
        error_failure(Some(&message), &error(ErrorType::UnknownGroup)),
        "message to #5 not sent: there is no group 5"
    );
    let leave = Asked::LeaveGroup {
        group_id: 5,
        label: "#team".into(),
    };
    assert_eq!(
        error_failure(Some(&leave), &error(ErrorType::Forbidden)),
        "could not leave #team: you are not a member of group 5"
    );
    let history = Asked::GroupHistory {
        group_id: 9,
        label: "#9".into(),
    };
    assert_eq!(
        error_failure(Some(&history), &error(ErrorType::UnknownGroup)),
        "history of #9 failed: there is no group 9"
    );
    let add = Asked::AddGroupMembers {
        group_id: 5,
        label: "#team".into(),
        members: vec!["zed".into()],
    };
    assert_eq!(
        error_failure(Some(&add), &error(ErrorType::UnknownUser)),
        "could not add zed to #team: there is no user named 'zed'"
    );
    let create = Asked::CreateGroup {
        name: "team".into(),
        members: vec!["bob".into(), "zed".into()],
    };
    assert_eq!(
        error_failure(Some(&create), &error(ErrorType::UnknownUser)),
        "could not create group 'team': no such user"
    );
    let named = Error {
        detail: "no such user: zed".into(),
        ..error(ErrorType::UnknownUser)
    };
    assert_eq!(
        error_failure(Some(&create), &named),
        "could not create group 'team': there is no user named 'zed'"
    );
    assert_eq!(
        error_failure(Some(&Asked::Groups), &error(ErrorType::UnknownTag)),
        "could not list groups: the server does not support this request"
    );
}

fn entry(name: &str, mutual: bool, online: bool, last: Option<i64>) -> DirectoryEntry {
    DirectoryEntry {
        username: name.into(),
        user_id: 1,
        mutual,
        online,
        last_activity: last,
    }
}

#[test]
fn directory_marks_who_is_online() {
    let directory = Directory {
        data: vec![
            entry("bob", true, true, Some(NOW)),
            entry("carol", true, false, Some(NOW - 60)),
            entry("dave", false, false, None),
        ],
    };
    assert_eq!(
        directory_lines(&directory, &stamper()),
        vec![
            "contacts (1 online of 3):",
            "* bob              online",
            "  carol            offline, last seen 13:44:30",
            "  dave             waiting for dave to add you",
        ]
    );
    assert_eq!(
        directory_lines(&Directory { data: vec![] }, &stamper()),
        vec!["no contacts yet; /add USER to add one"]
    );
    assert_eq!(
        added_line("bob", &directory),
        "bob is now a friend (online)"
    );
    assert_eq!(
        added_line("dave", &directory),
        "added dave; waiting for dave to add you"
    );
}

#[test]
fn pushed_events() {
    let online = Presence {
        username: "bob".into(),
        online: true,
    };
    assert_eq!(presence_line(&online), "* bob is online");
    let offline = Presence {
        online: false,
        ..online
    };
    assert_eq!(presence_line(&offline), "* bob is offline");
    let request = ContactRequest {
        username: "carol".into(),
    };
    assert_eq!(
        contact_request_line(&request),
        "* carol added you — /add carol to accept"
    );
}

#[test]
fn login_and_register_failures_in_plain_words() {
    assert_eq!(
        login_failure(false, LoginError::InvalidCredentials),
        "login failed: wrong username or password"
    );
    assert!(login_failure(true, LoginError::InvalidSession)
        .starts_with("could not resume the saved session: "));
    assert_eq!(
        register_failure("alice", RegisterError::UsernameTaken),
        "register failed: the username 'alice' is already taken"
    );
    for (error, wire) in [
        (RegisterError::InvalidUsername, "invalid_username"),
        (RegisterError::InvalidEmail, "invalid_email"),
        (RegisterError::WeakSecret, "weak_secret"),
        (RegisterError::RateLimited, "rate_limited"),
    ] {
        let text = register_failure("alice", error);
        assert!(text.starts_with("register failed: "), "{text}");
        assert!(!text.contains(wire) && !text.contains('{'), "{text}");
    }
}

#[test]
fn every_error_type_has_plain_words() {
    let all = [
        ErrorType::BadRequest,
        ErrorType::UnknownTag,
        ErrorType::NotLoggedIn,
        ErrorType::Forbidden,
        ErrorType::UnknownUser,
        ErrorType::UnknownGroup,
        ErrorType::TooLarge,
        ErrorType::RateLimited,
        ErrorType::ServerBusy,
    ];
    let asked = Asked::Message {
        to: "zed".into(),
        text: "hi".into(),
        encrypted: false,
    };
    for error_type in all {
        let error = Error {
            error_type,
            detail: String::new(),
            ref_tag: Some(11),
        };
        let text = error_failure(Some(&asked), &error);
        assert!(text.starts_with("message to zed not sent: "), "{text}");
        assert!(!text.contains(error_type.as_str()), "{text}");
    }
    let unknown = Error {
        error_type: ErrorType::UnknownUser,
        detail: "no such user".into(),
        ref_tag: Some(11),
    };
    assert_eq!(
        error_failure(Some(&asked), &unknown),
        "message to zed not sent: there is no user named 'zed'"
    );
    assert_eq!(error_failure(None, &unknown), "server error: no such user");
}

#[test]
fn devices_mark_this_one_and_who_is_online() {
    let session = |created_at, current, online, address: Option<&str>| SessionInfo {
        created_at,
        last_used_at: created_at + 60,
        address: address.map(str::to_string),
        confirmed_through: 0,
        current,
        online,
    };
    let sessions = Sessions {
        data: vec![
            session(NOW - 3600, true, true, Some("127.0.0.1")),
            session(NOW - 1800, false, false, None),
        ],
    };
    assert_eq!(
        devices_lines(&sessions, &stamper()),
        vec![
            "logged in on 2 devices (1 online now):",
            "  this device: logged in 12:45:30 from 127.0.0.1, online now",
            "  device 2: logged in 13:15:30 from an unknown address, last seen 13:16:30",
        ]
    );
}
