/// Which messages a history query reads, within one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `/v2/messages`: every message of the app.
    App,
    /// `/v2/users/{u}/messages`: sent by `u`, plus single-chat messages whose target is `u`.
    User(String),
    /// `/v2/groups/{gid}/messages`.
    Group(String),
    /// `/v2/chatrooms/{id}/messages`.
    Chatroom(String),
}

impl Scope {
    /// Stable one-byte tag, used in store keys and cursors. Never renumber.
    pub fn tag(&self) -> u8 {
        match self {
            Scope::App => 0,
            Scope::User(_) => 1,
            Scope::Group(_) => 2,
            Scope::Chatroom(_) => 3,
        }
    }

    /// The id the scope is about (empty for the whole app).
    pub fn id(&self) -> &str {
        match self {
            Scope::App => "",
            Scope::User(id) | Scope::Group(id) | Scope::Chatroom(id) => id,
        }
    }

    pub fn from_tag(tag: u8, id: String) -> Option<Scope> {
        Some(match tag {
            0 => Scope::App,
            1 => Scope::User(id),
            2 => Scope::Group(id),
            3 => Scope::Chatroom(id),
            _ => return None,
        })
    }
}
