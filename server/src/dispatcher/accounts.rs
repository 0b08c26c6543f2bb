//! Register, Login (password and session resume), Logout, disconnects and
//! the Presence they cause.
//!
//! A password login is three hops, none of which blocks the loop:
//! `FetchCredentials` (storage) → `Verify` (hashing worker) → `OpenSession`
//! (storage, which also takes the offline queue). A resume is one hop:
//! `ResumeSession`. Registration is `Derive` (hashing) → `CreateUser`.

use protocol::client::{Login, Logout, Register};
use protocol::server::{
    FailLogin, FailRegister, LoginError, RegisterError, SessionInfo, Sessions, SuccessLogin,
    SuccessLogout, SuccessRegister,
};
use protocol::validate;
use protocol::ClientTag;
use protocol::{ErrorType, ServerMessage};

use super::delivery::push_page;
use super::{Auth, Client, CloseReason, Dispatcher, Effects, Opening, SharedAttempt, Stream};
use crate::bus::BusEvent;
use crate::completion::ConnId;
use crate::hasher::HashJob;
use crate::password;
use crate::rate_limit::{address_key, Verdict};
use crate::shared_limits::{SharedLogin, SharedRegistration};
use crate::storage::{Command, GroupsTaken, StoredMessage};

/// Longest username echoed into the log for a failed login (client-chosen text).
const LOGGED_NAME_CHARS_MAX: usize = 40;

impl Dispatcher {
    /// Register: the address's rate limit first, before anything is looked
    /// up, so `username_taken` cannot be probed faster than registrations.
    pub(super) fn register(&mut self, conn: ConnId, body: Register, now: i64, fx: &mut Effects) {
        let failure = if !self.allow_registration(conn) {
            Some(RegisterError::RateLimited)
        } else if !validate::is_valid_username(&body.username) {
            Some(RegisterError::InvalidUsername)
        } else if !validate::is_valid_email(&body.email) {
            Some(RegisterError::InvalidEmail)
        } else if !validate::is_strong_enough_secret(&body.secret) {
            Some(RegisterError::WeakSecret)
        } else if self.users.contains_key(&body.username) {
            Some(RegisterError::UsernameTaken)
        } else {
            None
        };
        if let Some(error_type) = failure {
            fx.send(
                conn,
                &ServerMessage::FailRegister(FailRegister { error_type }),
                now,
            );
            return;
        }
        let Some(from) = self.clients.get(&conn).map(|c| c.peer.ip()) else {
            return;
        };
        fx.hashing.push(HashJob::Derive {
            to: fx.requester(conn),
            from,
            username: body.username,
            email: body.email,
            secret: body.secret,
        });
    }

    fn allow_registration(&mut self, conn: ConnId) -> bool {
        let clock = self.clock;
        match self.clients.get(&conn) {
            Some(client) => self.rate_limits.allow_registration(client.peer.ip(), clock),
            None => false,
        }
    }

    pub(super) fn user_created(
        &mut self,
        conn: ConnId,
        username: String,
        user_id: Option<i64>,
        now: i64,
        fx: &mut Effects,
    ) {
        let reply = match user_id {
            Some(user_id) => {
                let peer = self.clients.get(&conn).map(|c| c.peer.to_string());
                log::info!(
                    "{username} registered from {}",
                    peer.as_deref().unwrap_or("a closed connection")
                );
                self.users.insert(username.clone(), user_id);
                let event = BusEvent::UserCreated {
                    username: username.clone(),
                    user_id,
                };
                self.publish(event, fx);
                ServerMessage::SuccessRegister(SuccessRegister { username, user_id })
            }
            None => ServerMessage::FailRegister(FailRegister {
                error_type: RegisterError::UsernameTaken,
            }),
        };
        if self.clients.contains_key(&conn) {
            fx.send(conn, &reply, now);
        }
    }

    pub(super) fn register_rate_limited(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        let reply = ServerMessage::FailRegister(FailRegister {
            error_type: RegisterError::RateLimited,
        });
        fx.send(conn, &reply, now);
    }

    pub(super) fn login(&mut self, conn: ConnId, body: Login, now: i64, fx: &mut Effects) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        match client.auth {
            Auth::Anonymous => client.receipts = body.receipts,
            Auth::LoggedIn { .. } => {
                let reply = ServerMessage::FailLogin(FailLogin {
                    error_type: LoginError::AlreadyLoggedIn,
                });
                fx.send(conn, &reply, now);
                return;
            }
            Auth::Verifying { .. } | Auth::Opening { .. } => {
                fx.error(
                    conn,
                    ErrorType::BadRequest,
                    "a login is already in progress",
                    ClientTag::Login,
                    now,
                );
                return;
            }
        }
        if let Some(session_id) = body.session_id {
            match self.users.get(&body.username) {
                Some(&user_id) => {
                    let session_hash = password::session_hash(&session_id);
                    let peer = client.peer;
                    let include_groups =
                        self.begin_opening(conn, user_id, body.username, session_id, true);
                    fx.storage.push(Command::ResumeSession {
                        to: fx.requester(conn),
                        user_id,
                        session_hash,
                        receipts: body.receipts,
                        peer,
                        include_groups,
                        now,
                    });
                }
                None => self.send_login_failure(conn, LoginError::InvalidSession, now, fx),
            }
        } else if let Some(secret) = body.secret {
            let username = body.username;
            let (ip, clock) = (client.peer.ip(), self.clock);
            // At most one attempt per account in flight: parallel guesses
            // get `rate_limited` here, before any hashing.
            if !self.rate_limits.begin_login(conn, ip, &username, clock) {
                log::info!(
                    "login for {:?} from {ip} rate limited",
                    truncated(&username)
                );
                self.send_login_failure(conn, LoginError::RateLimited, now, fx);
                return;
            }
            let Some(client) = self.clients.get_mut(&conn) else {
                return;
            };
            // In a cluster an account may be new on another server, not yet
            // known here: storage is asked (and a missing one still costs
            // a hash, below).
            if self.users.contains_key(&username) || self.limits.cluster {
                client.auth = Auth::Verifying {
                    username: username.clone(),
                    secret,
                };
                let shared = self.begin_shared_login(conn, &username);
                fx.storage.push(Command::FetchCredentials {
                    to: fx.requester(conn),
                    username,
                    shared,
                });
            } else {
                // An unknown user still costs a full hash, so that timing
                // does not tell which usernames exist.
                fx.hashing.push(HashJob::Verify {
                    to: fx.requester(conn),
                    from: ip,
                    user_id: None,
                    secret: secret.clone(),
                    stored: None,
                });
                client.auth = Auth::Verifying { username, secret };
            }
        } else {
            fx.error(
                conn,
                ErrorType::BadRequest,
                "Login needs \"secret\" or \"session_id\"",
                ClientTag::Login,
                now,
            );
        }
    }

    pub(super) fn credentials_found(
        &mut self,
        conn: ConnId,
        found: Option<(i64, String)>,
        fx: &mut Effects,
    ) {
        if let Some(attempt) = self.shared_logins.get_mut(&conn) {
            attempt.charged = true;
        }
        let Some(Client {
            auth: Auth::Verifying { secret, .. },
            peer,
            ..
        }) = self.clients.get(&conn)
        else {
            // Gone meanwhile: the attempt ends unheard, counted as a failure.
            self.end_login_attempt(conn, Verdict::Failed, fx);
            return;
        };
        let (user_id, stored) = match found {
            Some((user_id, phc)) => (Some(user_id), Some(phc)),
            None => (None, None),
        };
        fx.hashing.push(HashJob::Verify {
            to: fx.requester(conn),
            from: peer.ip(),
            user_id,
            secret: secret.clone(),
            stored,
        });
    }

    pub(super) fn password_verified(
        &mut self,
        conn: ConnId,
        user_id: Option<i64>,
        now: i64,
        fx: &mut Effects,
    ) {
        let heard = matches!(
            self.clients.get(&conn).map(|c| &c.auth),
            Some(Auth::Verifying { .. })
        );
        // A verdict nobody hears counts as a failure whatever it is, so
        // hanging up cannot tell a right guess from the lockout it avoided.
        let verdict = match user_id {
            Some(_) if heard => Verdict::Succeeded,
            _ => Verdict::Failed,
        };
        self.end_login_attempt(conn, verdict, fx);
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let Auth::Verifying { username, .. } = &mut client.auth else {
            return;
        };
        let username = std::mem::take(username);
        let Some(user_id) = user_id else {
            log::info!(
                "failed login for {:?} from {}",
                truncated(&username),
                client.peer
            );
            client.auth = Auth::Anonymous;
            self.send_login_failure(conn, LoginError::InvalidCredentials, now, fx);
            self.run_deferred(conn, now, fx);
            return;
        };
        let peer = client.peer;
        // In a cluster the account may have been created on another server.
        self.users.entry(username.clone()).or_insert(user_id);
        let session_id = uuid::Uuid::new_v4().to_string();
        let session_hash = password::session_hash(&session_id);
        let include_groups = self.begin_opening(conn, user_id, username, session_id, false);
        fx.storage.push(Command::OpenSession {
            to: fx.requester(conn),
            user_id,
            session_hash,
            peer,
            include_groups,
            now,
        });
    }

    pub(super) fn login_rate_limited(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        self.end_login_attempt(conn, Verdict::NotTried, fx);
        self.abandon_login(conn);
        self.send_login_failure(conn, LoginError::RateLimited, now, fx);
        self.run_deferred(conn, now, fx);
    }

    /// Cluster mode: storage found the account or the address locked out
    /// by failures counted over every server; nothing was charged there.
    pub(super) fn login_locked(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        self.shared_logins.remove(&conn);
        log::info!("login from {conn:?} refused: locked out across the cluster");
        self.login_rate_limited(conn, now, fx);
    }

    /// Cluster mode (with rate limits on): what storage needs to check and
    /// charge `conn`'s password attempt on the shared lockout, remembered
    /// until the attempt ends.
    fn begin_shared_login(&mut self, conn: ConnId, username: &str) -> Option<SharedLogin> {
        if !self.limits.cluster {
            return None;
        }
        let config = self.limits.rates?;
        let (address, account) = self.rate_limits.attempt_standing(conn)?;
        let shared = SharedLogin {
            address: address.to_string(),
            account,
            failures_per_account: config.failures_per_account,
            failures_per_ip: config.failures_per_ip,
        };
        let attempt = SharedAttempt {
            username: username.to_owned(),
            shared: shared.clone(),
            charged: false,
        };
        self.shared_logins.insert(conn, attempt);
        Some(shared)
    }

    /// The password attempt of `conn` ended: counted here, and (cluster
    /// mode) in storage if storage charged it.
    pub(super) fn end_login_attempt(&mut self, conn: ConnId, verdict: Verdict, fx: &mut Effects) {
        self.rate_limits.end_login(conn, verdict, self.clock);
        let Some(attempt) = self.shared_logins.remove(&conn) else {
            return;
        };
        if attempt.charged {
            fx.storage.push(Command::EndSharedLogin {
                username: attempt.username,
                shared: attempt.shared,
                verdict,
            });
        }
    }

    /// Cluster mode (with rate limits on): the registration is also counted
    /// on the address's shared bucket.
    pub(super) fn shared_registration(&self, conn: ConnId) -> Option<SharedRegistration> {
        if !self.limits.cluster {
            return None;
        }
        let rate = self.limits.rates?.registrations_per_ip;
        let peer = self.clients.get(&conn)?.peer;
        Some(SharedRegistration {
            address: address_key(peer.ip()).to_string(),
            rate,
        })
    }

    fn send_login_failure(&self, conn: ConnId, error_type: LoginError, now: i64, fx: &mut Effects) {
        fx.send(
            conn,
            &ServerMessage::FailLogin(FailLogin { error_type }),
            now,
        );
    }

    /// Makes `conn` a recipient of `user_id` while storage opens the session;
    /// returns whether the queue includes group messages. Until storage
    /// answers, every message committed is one its queue read will see
    /// (storage runs commands in order), so the queue's bound is "all"
    /// until storage tells where it read ([`Reply::SessionOpened`]).
    ///
    /// [`Reply::SessionOpened`]: crate::storage::Reply::SessionOpened
    fn begin_opening(
        &mut self,
        conn: ConnId,
        user_id: i64,
        username: String,
        session_id: String,
        resumed: bool,
    ) -> bool {
        let queue_before = i64::MAX;
        // The group part of the queue is what lies past the user's group
        // cursors, which confirmations keep current. A live device without
        // receipts moves them only when it leaves, so while one is live it
        // counts as having taken the group messages before this login.
        let include_groups = !self.has_any_legacy_connection(user_id);
        let Some(client) = self.clients.get_mut(&conn) else {
            return include_groups;
        };
        client.auth = Auth::Opening(Box::new(Opening {
            user_id,
            username,
            session_hash: password::session_hash(&session_id),
            session_id,
            resumed,
            queue_before,
            include_groups,
            success_sent: false,
            queue_pushed_through: 0,
            receipts: client.receipts,
            confirmed_through: 0,
            mutual_contacts: Vec::new(),
            held: Vec::new(),
            held_bytes: 0,
            behind_from: None,
        }));
        self.online.entry(user_id).or_default().push(conn);
        include_groups
    }

    /// Returns a connection that was logging in to anonymous.
    pub(super) fn abandon_login(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if let Auth::Opening(opening) = &client.auth {
            let user_id = opening.user_id;
            self.remove_from_online(user_id, conn);
        }
        if let Some(client) = self.clients.get_mut(&conn) {
            client.auth = Auth::Anonymous;
        }
    }

    fn remove_from_online(&mut self, user_id: i64, conn: ConnId) {
        if let Some(conns) = self.online.get_mut(&user_id) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.online.remove(&user_id);
            }
        }
    }

    pub(super) fn session_invalid(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        if !self.clients.contains_key(&conn) {
            return;
        }
        self.abandon_login(conn);
        self.send_login_failure(conn, LoginError::InvalidSession, now, fx);
        self.run_deferred(conn, now, fx);
    }

    /// The session is open: SuccessLogin, then the offline queue chunk by
    /// chunk, then whatever arrived meanwhile; Presence if this is the user's
    /// first connection.
    pub(super) fn session_opened(
        &mut self,
        conn: ConnId,
        opened: SessionOpened,
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(Auth::Opening(opening)) = self.clients.get_mut(&conn).map(|c| &mut c.auth) else {
            return;
        };
        let Opening {
            user_id,
            username,
            session_id,
            success_sent,
            mutual_contacts,
            confirmed_through,
            queue_before,
            ..
        } = &mut **opening;
        *queue_before = opened.queue_before;
        *mutual_contacts = opened.mutual_contacts;
        *confirmed_through = opened.confirmed_through;
        if !*success_sent {
            *success_sent = true;
            let success = SuccessLogin {
                username: username.clone(),
                user_id: *user_id,
                session_id: Some(session_id.clone()),
            };
            fx.send(conn, &ServerMessage::SuccessLogin(success), now);
        }
        self.push_queue_chunk(conn, opened.queued, opened.more_queued, now, fx);
    }

    /// Pushes one chunk of the offline queue; asks for the next or finishes.
    pub(super) fn push_queue_chunk(
        &mut self,
        conn: ConnId,
        queued: Vec<StoredMessage>,
        more_queued: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        let Some(Auth::Opening(opening)) = self.clients.get_mut(&conn).map(|c| &mut c.auth) else {
            return;
        };
        let Opening {
            user_id,
            queue_before,
            include_groups,
            queue_pushed_through,
            resumed,
            receipts,
            confirmed_through,
            ..
        } = &mut **opening;
        let user_id = *user_id;
        let receipts = *receipts;
        // A resumed receipts session is pushed everything past its
        // confirmation; any other login the offline queue.
        let since = (receipts && *resumed).then_some(*confirmed_through);
        if let Some(last) = queued.last() {
            *queue_pushed_through = last.message_id;
        }
        let next = Command::TakeQueue {
            to: fx.requester(conn),
            user_id,
            queue_before: *queue_before,
            after: *queue_pushed_through,
            since,
            include_groups: *include_groups,
        };
        push_page(conn, (user_id, receipts), queued, fx);
        if more_queued {
            // The next chunk once this one is written out, so a long queue
            // never piles up past the connection's output cap.
            fx.after_flush.push((conn, next));
        } else {
            self.finish_login(conn, now, fx);
        }
    }

    /// The queue is pushed: send what was held, announce, run what waited.
    fn finish_login(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let Auth::Opening(opening) = std::mem::replace(&mut client.auth, Auth::Anonymous) else {
            return;
        };
        let Opening {
            user_id,
            username,
            session_hash,
            resumed,
            mutual_contacts,
            held,
            behind_from,
            include_groups,
            queue_before,
            receipts,
            confirmed_through,
            queue_pushed_through,
            ..
        } = *opening;
        let peer = client.peer;
        let first_connection = !self.has_logged_in_connection(user_id);
        // Held messages count as unflushed like any other: if the connection
        // dies before writing them, its departure puts them back.
        let mut held_ids = Vec::new();
        for (frame, message_id) in held {
            match message_id {
                Some(id) => {
                    held_ids.push(id);
                    fx.push_message(conn, frame, id);
                }
                None => fx.push(conn, frame),
            }
        }
        if !held_ids.is_empty() && !receipts {
            fx.storage.push(Command::MarkDelivered {
                user_id,
                message_ids: held_ids,
            });
        }
        let how = if resumed { " (session resumed)" } else { "" };
        log::info!("{username} logged in from {peer}{how}");
        self.counters.logins += 1;
        if first_connection {
            self.announce_presence((user_id, &username), &mutual_contacts, true, now, fx);
        }
        if let Some(client) = self.clients.get_mut(&conn) {
            client.auth = Auth::LoggedIn {
                user_id,
                username,
                session_hash,
                groups_from: if include_groups { 0 } else { queue_before },
                receipts,
                confirmed_through,
                stream: match behind_from {
                    // Cluster mode: every device reads what came after its
                    // queue from storage (see `Stream::FromStorage`): a
                    // receipts device past what it was pushed, a device
                    // without receipts everything from the queue's bound.
                    _ if self.limits.cluster => Stream::FromStorage {
                        from: if receipts {
                            queue_pushed_through.max(confirmed_through) + 1
                        } else {
                            queue_before
                        },
                        reading: true,
                        again: false,
                    },
                    Some(from) => Stream::Behind { from },
                    None => Stream::Live,
                },
            };
        }
        // What did not fit while it logged in comes from storage.
        self.ask_catch_up_page(conn, fx);
        self.run_deferred(conn, now, fx);
    }

    /// The user's first connection here logged in, or the last went away:
    /// their mutual contacts are told (here, unless another server of a
    /// cluster has the user online, and through the bus).
    fn announce_presence(
        &mut self,
        (user_id, username): (i64, &str),
        contacts: &[i64],
        online: bool,
        now: i64,
        fx: &mut Effects,
    ) {
        let event = BusEvent::Presence {
            user_id,
            username: username.to_owned(),
            online,
            mutual_contacts: contacts.to_vec(),
            stamp: self.presence_stamp(),
        };
        self.publish(event, fx);
        if !self.online_elsewhere(user_id) {
            self.tell_contacts(username, contacts, online, now, fx);
        }
    }

    pub(super) fn logout(&mut self, conn: ConnId, body: Logout, now: i64, fx: &mut Effects) {
        let Some(Auth::LoggedIn {
            username,
            session_hash,
            ..
        }) = self.clients.get(&conn).map(|c| &c.auth)
        else {
            return;
        };
        if body
            .username
            .as_ref()
            .is_some_and(|named| named != username)
        {
            fx.error(
                conn,
                ErrorType::Forbidden,
                "you can only log yourself out",
                ClientTag::Logout,
                now,
            );
            return;
        }
        fx.storage.push(Command::EndSession {
            to: fx.requester(conn),
            session_hash: session_hash.clone(),
        });
    }

    /// The session is deleted: confirm, and close every connection using it,
    /// including those still resuming it (their login never finishes, and
    /// what they pipelined behind it never runs).
    pub(super) fn session_ended(&mut self, conn: ConnId, now: i64, fx: &mut Effects) {
        let Some(Auth::LoggedIn {
            user_id,
            username,
            session_hash,
            ..
        }) = self.clients.get(&conn).map(|c| &c.auth)
        else {
            return;
        };
        let (user_id, username, session_hash) = (*user_id, username.clone(), session_hash.clone());
        log::info!("{username} logged out");
        let reply = ServerMessage::SuccessLogout(SuccessLogout {
            username: username.clone(),
        });
        fx.send(conn, &reply, now);
        let same_session = self.connections_of_session(Some(user_id), &session_hash);
        // The session's connections on the other servers of a cluster too.
        self.publish(BusEvent::SessionEnded { session_hash }, fx);
        // Closing is departing: each one, logging in or not, stops being a
        // recipient at once and what it pipelined behind its Login is
        // dropped with it (see `disconnected`).
        for other in same_session {
            fx.closes.push((other, CloseReason::LoggedOut));
        }
    }

    /// GetSessions answered: each session marked as the asking connection's
    /// and as online when a logged-in connection of the user uses it.
    pub(super) fn send_sessions(
        &mut self,
        conn: ConnId,
        sessions: Vec<(String, SessionInfo)>,
        now: i64,
        fx: &mut Effects,
    ) {
        let hash_of = |other: &ConnId| match self.clients.get(other).map(|c| &c.auth) {
            Some(Auth::LoggedIn { session_hash, .. }) => Some(session_hash.as_str()),
            _ => None,
        };
        let Some(user_id) = self.logged_in_user(conn) else {
            return;
        };
        let current = hash_of(&conn);
        let online: Vec<&str> = self
            .online
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(hash_of)
            .collect();
        let data = sessions
            .into_iter()
            .map(|(hash, info)| SessionInfo {
                current: current == Some(hash.as_str()),
                online: online.contains(&hash.as_str()),
                ..info
            })
            .collect();
        fx.send(conn, &ServerMessage::Sessions(Sessions { data }), now);
    }

    /// The one departure path: `conn` stops being a recipient, whatever the
    /// reason (clean close, logout, idle timeout, slow consumer, abuse,
    /// shutdown, error; logged in, mid-login or mid-queue). The loop calls it
    /// as soon as it decides to close (not when the close completes), with the
    /// first message id it had not finished writing to the socket.
    ///
    /// What the connection may not have received goes back: 1:1 messages from
    /// `unflushed_from` on return to the offline queue, and the user's group
    /// cursors move only as far as the connection took. If it was the user's
    /// last connection, storage marks the user offline and contacts are told.
    pub fn disconnected(
        &mut self,
        conn: ConnId,
        unflushed_from: Option<i64>,
        now: i64,
        fx: &mut Effects,
    ) {
        self.record_confirmation(conn, fx);
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        let written_through = |all_through: i64| unflushed_from.map_or(all_through, |id| id - 1);
        let (user_id, username, session_hash, receipts, groups_taken) = match client.auth {
            Auth::LoggedIn {
                user_id,
                username,
                session_hash,
                groups_from,
                receipts,
                stream,
                ..
            } => {
                log::info!("{username} disconnected ({})", client.peer);
                let last_pushed = match stream {
                    Stream::Live => self.highest_message_id,
                    Stream::Behind { from } | Stream::FromStorage { from, .. } => from - 1,
                };
                let through = written_through(last_pushed);
                let taken = GroupsTaken {
                    from: groups_from,
                    through,
                };
                (
                    user_id,
                    username,
                    session_hash,
                    receipts,
                    (!receipts).then_some(taken),
                )
            }
            Auth::Opening(opening) => {
                let Opening {
                    user_id,
                    username,
                    session_hash,
                    include_groups,
                    queue_before,
                    queue_pushed_through,
                    receipts,
                    ..
                } = *opening;
                let took_groups = include_groups && queue_pushed_through > 0 && !receipts;
                let taken = took_groups.then(|| GroupsTaken {
                    from: 0,
                    through: written_through(queue_pushed_through).min(queue_before - 1),
                });
                (user_id, username, session_hash, receipts, taken)
            }
            Auth::Anonymous | Auth::Verifying { .. } => return,
        };
        // A receipts device took only what it confirmed; nothing to put back.
        if let Some(from_message_id) = unflushed_from.filter(|_| !receipts) {
            fx.storage.push(Command::Requeue {
                user_id,
                from_message_id,
            });
        }
        self.remove_from_online(user_id, conn);
        fx.storage.push(Command::ConnectionLost {
            user_id,
            username,
            session_hash,
            last: !self.has_logged_in_connection(user_id),
            groups_taken,
            now,
        });
    }

    pub(super) fn went_offline(
        &mut self,
        user_id: i64,
        username: &str,
        mutual_contacts: &[i64],
        now: i64,
        fx: &mut Effects,
    ) {
        // The user may have come back while storage worked.
        if !self.has_logged_in_connection(user_id) {
            self.announce_presence((user_id, username), mutual_contacts, false, now, fx);
        }
    }
}

/// What storage says about a session it opened (see `Reply::SessionOpened`).
pub(super) struct SessionOpened {
    /// The first chunk of the queue.
    pub queued: Vec<StoredMessage>,
    /// More of the queue remains.
    pub more_queued: bool,
    /// Mutual contacts, for Presence.
    pub mutual_contacts: Vec<i64>,
    /// The session's confirmation.
    pub confirmed_through: i64,
    /// The queue's bound: it holds the messages below this id.
    pub queue_before: i64,
}

/// At most [`LOGGED_NAME_CHARS_MAX`] characters of a client-chosen name.
fn truncated(name: &str) -> String {
    name.chars().take(LOGGED_NAME_CHARS_MAX).collect()
}
