//! Ids, roles and audiences: the nouns every frame is made of.
//!
//! Ids are newtypes so a user id can never be passed where an inbox id is expected.
//! Conversation and event ids are UUIDs chosen by the server; user and inbox ids are
//! strings chosen by the operator (a token's `sub`, an admin's `PUT /v1/inboxes/{id}`).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7), so ids sort roughly by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

uuid_id!(
    /// A conversation between one contact and a team.
    ConversationId
);
uuid_id!(
    /// One event in a conversation's log.
    EventId
);
string_id!(
    /// A user: a token's `sub`. Customers are contacts; agents, supervisors and admins staff.
    UserId
);
string_id!(
    /// A team (`@team-id` mentions every member; conversations can be assigned to one).
    TeamId
);
string_id!(
    /// An inbox (a queue of conversations, such as `support` or `billing`).
    InboxId
);

/// What a caller is, from their token's `role` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Agent,
    Supervisor,
    Admin,
}

impl Role {
    /// Agents, supervisors and admins: the team's side of a conversation.
    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Customer)
    }

    /// The stream of events this role reads.
    pub fn audience(self) -> Audience {
        match self {
            Role::Customer => Audience::Customer,
            Role::Agent => Audience::Agents,
            Role::Supervisor | Role::Admin => Audience::Supervisors,
        }
    }

    pub fn can_write_notes(self) -> bool {
        self.is_staff()
    }

    /// Supervisors-only notes (coaching, QA) are written and read by supervisors and admins.
    pub fn can_write_supervisor_notes(self) -> bool {
        matches!(self, Role::Supervisor | Role::Admin)
    }

    pub fn can_manage_definitions(self) -> bool {
        matches!(self, Role::Admin)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "agent" => Ok(Role::Agent),
            "supervisor" => Ok(Role::Supervisor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected customer, agent, supervisor or admin)"
            )),
        }
    }
}

/// One of a conversation's three streams. Each has its own gap-free `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Public events only.
    Customer,
    /// Public and internal events.
    Agents,
    /// Every event, supervisors-only notes included.
    Supervisors,
}
