//! The four certificate roles and their file names.

use std::fmt;

/// The CA certificate file in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key file in a TLS directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// What a certificate holder may do (see DESIGN.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The apiserver's own serving certificate.
    Server,
    /// An operator: everything.
    Admin,
    /// A peer cluster's mesh syncer: Watch with scope `exported` only.
    Remote,
    /// A node agent: Watch `merged`, Lookup, Status.
    Agent,
}

impl Role {
    /// Every role, in the order `init` writes them.
    pub const ALL: [Role; 4] = [Role::Server, Role::Admin, Role::Remote, Role::Agent];

    /// The role's name as it appears in the identity URI and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Admin => "admin",
            Role::Remote => "remote",
            Role::Agent => "agent",
        }
    }

    /// The inverse of [`Role::as_str`]; exact, lowercase match only.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The certificate file for `role`, e.g. `server.crt`.
pub fn cert_file(role: Role) -> &'static str {
    match role {
        Role::Server => "server.crt",
        Role::Admin => "admin.crt",
        Role::Remote => "remote.crt",
        Role::Agent => "agent.crt",
    }
}

/// The private key file for `role`, e.g. `server.key`.
pub fn key_file(role: Role) -> &'static str {
    match role {
        Role::Server => "server.key",
        Role::Admin => "admin.key",
        Role::Remote => "remote.key",
        Role::Agent => "agent.key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(cert_file(role), format!("{role}.crt"));
            assert_eq!(key_file(role), format!("{role}.key"));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse(""), None);
    }
}
