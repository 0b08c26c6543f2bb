//! The macro that turns storage's tables of commands and replies into their
//! enums. A row is a variant with its fields; the macro adds the
//! `to: Requester` field to every row of the `answered` part and writes
//! `requester()` from the same rows, so the connection waiting for a command
//! (and the request tag it answers) is never spelled a second time.

/// Declares an enum from a table: `answered` rows get a `to: Requester`
/// field, `silent` rows do not. A command's answered row names the request
/// it answers (`Name answers ClientTagName { fields }`) and its
/// `requester()` gives the connection with that tag; a reply's row names
/// none and its `requester()` gives the connection alone.
macro_rules! storage_table {
    (
        $(#[$enum_doc:meta])* pub enum $enum:ident;
        fn requester() -> $requester:ty;
        $(#[$answered_doc:meta])*
        answered {
            $($(#[$doc:meta])* $name:ident $(answers $tag:ident)? {
                $($(#[$field_doc:meta])* $field:ident: $ty:ty,)*
            },)*
        }
        $(#[$silent_doc:meta])*
        silent {
            $($(#[$silent_variant_doc:meta])* $silent:ident {
                $($(#[$silent_field_doc:meta])* $silent_field:ident: $silent_ty:ty,)*
            },)*
        }
    ) => {
        $(#[$enum_doc])*
        #[derive(Debug)]
        pub enum $enum {
            $($(#[$doc])* $name {
                /// The connection waiting for (or answered by) this, with
                /// its request id.
                to: Requester,
                $($(#[$field_doc])* $field: $ty,)*
            },)*
            $($(#[$silent_variant_doc])* $silent {
                $($(#[$silent_field_doc])* $silent_field: $silent_ty,)*
            },)*
        }

        impl $enum {
            /// The connection waiting for this (for a command: with the tag
            /// of its request, to tell it `server_busy` when the command
            /// cannot be queued or fails), if any.
            pub fn requester(&self) -> $requester {
                match self {
                    $($enum::$name { to, .. } => storage_table!(@answer to $($tag)?),)*
                    $($enum::$silent { .. } => None,)*
                }
            }
        }
    };
    (@answer $to:ident $tag:ident) => {
        Some(($to, ClientTag::$tag))
    };
    (@answer $to:ident) => {
        Some($to)
    };
}
