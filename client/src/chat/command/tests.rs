use super::*;

fn parsed(line: &str) -> Command {
    parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn blank_lines_and_comments_do_nothing() {
    for line in ["", "   ", "\n", "# a comment", "  # indented"] {
        assert_eq!(parsed(line), Command::Nothing, "{line:?}");
    }
}

#[test]
fn register_and_login_take_an_optional_secret_to_the_end_of_the_line() {
    assert_eq!(
        parsed("/register alice a@example.com"),
        Command::Register {
            username: "alice".into(),
            email: "a@example.com".into(),
            secret: None
        }
    );
    assert_eq!(
        parsed("/register alice a@example.com correct horse\r\n"),
        Command::Register {
            username: "alice".into(),
            email: "a@example.com".into(),
            secret: Some("correct horse".into())
        }
    );
    assert_eq!(
        parsed("/login bob"),
        Command::Login {
            username: "bob".into(),
            secret: None
        }
    );
    assert_eq!(
        parsed("/LOGIN bob  s3cret-pw "),
        Command::Login {
            username: "bob".into(),
            secret: Some("s3cret-pw".into())
        }
    );
    assert_eq!(
        parse_line("/register alice"),
        Err(ParseError::Usage(USAGE_REGISTER))
    );
    assert_eq!(parse_line("/login"), Err(ParseError::Usage(USAGE_LOGIN)));
}

#[test]
fn messages_keep_their_text_and_the_at_shortcut_is_the_same_command() {
    let expected = Command::Message {
        to: "bob".into(),
        text: "hello,  world  ✓".into(),
        plain: false,
    };
    assert_eq!(parsed("/msg bob hello,  world  ✓"), expected);
    assert_eq!(parsed("@bob hello,  world  ✓  "), expected);
    assert_eq!(parsed("/m   bob   hello,  world  ✓"), expected);
    assert_eq!(
        parse_line("/msg bob"),
        Err(ParseError::Usage(USAGE_MESSAGE))
    );
    assert_eq!(parse_line("@bob   "), Err(ParseError::Usage(USAGE_MESSAGE)));
    assert_eq!(
        parsed("/msg --plain bob hello,  world  ✓"),
        Command::Message {
            to: "bob".into(),
            text: "hello,  world  ✓".into(),
            plain: true,
        }
    );
    assert_eq!(
        parse_line("/msg --plain bob"),
        Err(ParseError::Usage(USAGE_MESSAGE))
    );
    assert_eq!(
        parse_line("@b hi"),
        Err(ParseError::InvalidUsername("b".into()))
    );
}

#[test]
fn history_takes_an_optional_count_within_the_protocol_limit() {
    assert_eq!(
        parsed("/history bob"),
        Command::History {
            with: Chat::User("bob".into()),
            limit: None
        }
    );
    assert_eq!(
        parsed("/history bob 200"),
        Command::History {
            with: Chat::User("bob".into()),
            limit: Some(200)
        }
    );
    for bad in ["0", "201", "-1", "ten"] {
        assert_eq!(
            parse_line(&format!("/history bob {bad}")),
            Err(ParseError::InvalidLimit(bad.into()))
        );
    }
    assert_eq!(
        parse_line("/history bob 5 6"),
        Err(ParseError::Usage(USAGE_HISTORY))
    );
}

#[test]
fn group_history_takes_a_hash_and_the_group_id() {
    assert_eq!(
        parsed("/history #5 20"),
        Command::History {
            with: Chat::Group(5),
            limit: Some(20)
        }
    );
    assert_eq!(
        parse_line("/history #team"),
        Err(ParseError::InvalidGroupId("#team".into()))
    );
    assert_eq!(
        parse_line("/history #0"),
        Err(ParseError::InvalidGroupId("#0".into()))
    );
}

#[test]
fn group_commands() {
    assert_eq!(
        parsed("/group create team bob carol"),
        Command::CreateGroup {
            name: "team".into(),
            members: vec!["bob".into(), "carol".into()]
        }
    );
    assert_eq!(
        parsed("/GROUP create   team  bob, carol "),
        Command::CreateGroup {
            name: "team".into(),
            members: vec!["bob".into(), "carol".into()]
        }
    );
    assert_eq!(
        parse_line("/group create team"),
        Err(ParseError::Usage(USAGE_GROUP_CREATE))
    );
    assert_eq!(
        parse_line("/group create"),
        Err(ParseError::Usage(USAGE_GROUP_CREATE))
    );
    let long = "x".repeat(GROUP_NAME_MAX_CHARS + 1);
    assert_eq!(
        parse_line(&format!("/group create {long} bob")),
        Err(ParseError::InvalidGroupName(long))
    );
    assert_eq!(
        parse_line("/group create team bob b"),
        Err(ParseError::InvalidUsername("b".into()))
    );
    assert_eq!(
        parsed("/group add 3 dave"),
        Command::AddGroupMembers {
            group_id: 3,
            members: vec!["dave".into()]
        }
    );
    assert_eq!(
        parsed("/group add #3 dave erin"),
        Command::AddGroupMembers {
            group_id: 3,
            members: vec!["dave".into(), "erin".into()]
        }
    );
    assert_eq!(
        parse_line("/group add 3"),
        Err(ParseError::Usage(USAGE_GROUP_ADD))
    );
    assert_eq!(
        parse_line("/group add team dave"),
        Err(ParseError::InvalidGroupId("team".into()))
    );
    assert_eq!(
        parsed("/group leave 3"),
        Command::LeaveGroup { group_id: 3 }
    );
    assert_eq!(
        parse_line("/group leave 3 4"),
        Err(ParseError::Usage(USAGE_GROUP_LEAVE))
    );
    for bad in ["-1", "+3", "1.5", "99999999999999999999"] {
        assert_eq!(
            parse_line(&format!("/group leave {bad}")),
            Err(ParseError::InvalidGroupId(bad.into())),
            "{bad}"
        );
    }
    assert_eq!(parse_line("/group"), Err(ParseError::Usage(USAGE_GROUP)));
    assert_eq!(
        parse_line("/group rename 3 x"),
        Err(ParseError::Usage(USAGE_GROUP))
    );
    assert_eq!(parsed("/groups"), Command::Groups);
    assert_eq!(parse_line("/groups 3"), Err(ParseError::Usage("/groups")));
    assert!(!parsed("/groups").is_local());
}

#[test]
fn group_messages_keep_their_text() {
    let expected = Command::GroupMessage {
        group_id: 7,
        text: "stand-up  in 5".into(),
    };
    assert_eq!(parsed("/gmsg 7 stand-up  in 5  "), expected);
    assert_eq!(parsed("/gmsg #7 stand-up  in 5"), expected);
    assert_eq!(
        parse_line("/gmsg 7"),
        Err(ParseError::Usage(USAGE_GROUP_MESSAGE))
    );
    assert_eq!(
        parse_line("/gmsg team hi"),
        Err(ParseError::InvalidGroupId("team".into()))
    );
    assert!(HELP.contains("/gmsg ID TEXT") && HELP.contains("/history #ID [N]"));
}

#[test]
fn contact_and_local_commands() {
    assert_eq!(
        parsed("/add carol"),
        Command::Add {
            username: "carol".into()
        }
    );
    assert_eq!(
        parsed("/remove carol"),
        Command::Remove {
            username: "carol".into()
        }
    );
    assert_eq!(parse_line("/add"), Err(ParseError::Usage(USAGE_ADD)));
    assert_eq!(parse_line("/add a b"), Err(ParseError::Usage(USAGE_ADD)));
    assert_eq!(parsed("/friends"), Command::Friends);
    assert_eq!(parsed("/logout"), Command::Logout);
    assert_eq!(parsed("/whoami"), Command::Whoami);
    assert_eq!(parsed("/help"), Command::Help);
    assert_eq!(parsed("/quit"), Command::Quit);
    assert_eq!(parse_line("/friends x"), Err(ParseError::Usage("/friends")));
    assert!(parsed("/quit").is_local() && !parsed("/friends").is_local());
    assert_eq!(parsed("/status"), Command::Status { with: None });
    assert_eq!(
        parsed("/status  bob "),
        Command::Status {
            with: Some("bob".into())
        }
    );
    assert_eq!(
        parse_line("/status bob carol"),
        Err(ParseError::Usage(USAGE_STATUS))
    );
    assert!(parsed("/status").is_local());
    assert!(HELP.contains("/status [USER]") && HELP.contains("✓✓"));
}

#[test]
fn unknown_input_is_explained() {
    assert_eq!(
        parse_line("/frobnicate"),
        Err(ParseError::UnknownCommand("frobnicate".into()))
    );
    assert_eq!(parse_line("hello there"), Err(ParseError::NotACommand));
    assert_eq!(
        parse_line("/add has/slash"),
        Err(ParseError::InvalidUsername("has/slash".into()))
    );
    assert!(ParseError::NotACommand
        .to_string()
        .contains("/msg USER TEXT"));
}
