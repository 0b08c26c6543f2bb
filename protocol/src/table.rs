//! The one macro that turns a table of messages — tag, name, body, doc —
//! into everything the wire needs: the message enum, the tag enum, decoding
//! and encoding. `client.rs` and `server.rs` each invoke it once, so adding
//! a message is one line in one table (plus its body type).

/// Declares `$message` (one variant per row), `$tag_enum` (the tag numbers,
/// by name: the one place they are written) and, in the invoking module,
/// `decode_body(tag, text)` (and [`FromTaggedMap`](crate::envelope::FromTaggedMap)
/// for the one-pass decoding) and `encode_body(message, time, request_id)`.
macro_rules! wire_messages {
    (
        $(#[$message_doc:meta])* enum $message:ident;
        $(#[$tag_doc:meta])* tags $tag_enum:ident;
        $($tag:literal => $name:ident $(($body:ty))?, $doc:literal;)*
    ) => {
        $(#[$message_doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $message {
            $(#[doc = $doc] $name $(($body))?,)*
        }

        $(#[$tag_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $tag_enum {
            $(#[doc = $doc] $name = $tag,)*
        }

        impl $tag_enum {
            /// The tag with this number, if this direction has it.
            pub fn from_number(tag: i64) -> Option<$tag_enum> {
                match tag {
                    $($tag => Some($tag_enum::$name),)*
                    _ => None,
                }
            }

            /// The message's name, for logs (never its content).
            pub fn name(self) -> &'static str {
                match self {
                    $($tag_enum::$name => stringify!($name),)*
                }
            }
        }

        impl $message {
            /// The message's tag, by name.
            pub fn kind(&self) -> $tag_enum {
                match self {
                    $(wire_messages!(@pattern $message $name $($body)?) => $tag_enum::$name,)*
                }
            }

            /// The message's wire tag.
            pub fn tag(&self) -> u8 {
                self.kind() as u8
            }

            /// The message's name, for logs (never its content).
            pub fn name(&self) -> &'static str {
                self.kind().name()
            }
        }

        impl $crate::envelope::FromTaggedMap for $message {
            fn from_map<'de, A: serde::de::MapAccess<'de>>(
                tag: i64,
                map: A,
            ) -> Result<Self, A::Error> {
                match $tag_enum::from_number(tag) {
                    $(Some($tag_enum::$name) =>
                        wire_messages!(@from_map $message map, $name $($body)?),)*
                    None => Err(serde::de::Error::custom("unknown tag")),
                }
            }
        }

        fn decode_body(tag: i64, text: &str) -> Result<$message, $crate::error::DecodeError> {
            match $tag_enum::from_number(tag) {
                $(Some($tag_enum::$name) =>
                    wire_messages!(@decode $message tag, text, $name $($body)?),)*
                None => Err($crate::error::DecodeError::UnknownTag(tag)),
            }
        }

        /// Encodes a message's body under its tag, with `time` and the
        /// `request_id` it answers or carries, if any.
        fn encode_body(
            message: &$message,
            time: Option<i64>,
            id: Option<&$crate::request_id::RequestId>,
        ) -> String {
            let tag = message.tag();
            match message {
                $(wire_messages!(@bind $message body, $name $($body)?) =>
                    wire_messages!(@encode tag, time, id, body, $($body)?),)*
            }
        }
    };
    (@pattern $message:ident $name:ident) => { $message::$name };
    (@pattern $message:ident $name:ident $body:ty) => { $message::$name(_) };
    (@bind $message:ident $var:ident, $name:ident) => { $message::$name };
    (@bind $message:ident $var:ident, $name:ident $body:ty) => { $message::$name($var) };
    (@decode $message:ident $tag:ident, $text:ident, $name:ident) => {{
        $crate::envelope::read_body::<$crate::client::Empty>($tag, $text)?;
        Ok($message::$name)
    }};
    (@decode $message:ident $tag:ident, $text:ident, $name:ident $body:ty) => {
        Ok($message::$name($crate::envelope::read_body($tag, $text)?))
    };
    (@from_map $message:ident $map:ident, $name:ident) => {{
        $crate::envelope::body_from_map::<$crate::client::Empty, _>($map)?;
        Ok($message::$name)
    }};
    (@from_map $message:ident $map:ident, $name:ident $body:ty) => {
        $crate::envelope::body_from_map::<$body, _>($map).map($message::$name)
    };
    (@encode $tag:ident, $time:ident, $id:ident, $var:ident,) => {
        $crate::envelope::write_framed($tag, $time, $id, &$crate::client::Empty {})
    };
    (@encode $tag:ident, $time:ident, $id:ident, $var:ident, $body:ty) => {
        $crate::envelope::write_framed($tag, $time, $id, $var)
    };
}

pub(crate) use wire_messages;
