//! Permissions: the app roles and delegated scopes Meterline understands, and the one table of what implies what.

use std::fmt;

/// A permission an operation can require. App-only tokens carry them as `roles`, delegated tokens as `scp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Manage tenants, plans and API clients of every tenant. The only permission that crosses tenants.
    PlatformAdmin,
    /// Manage the caller's own tenant: its API clients.
    TenantAdmin,
    DocumentsRead,
    DocumentsWrite,
    UsageRead,
    AuditRead,
}

impl Permission {
    pub const ALL: &'static [Permission] = &[
        Permission::PlatformAdmin,
        Permission::TenantAdmin,
        Permission::DocumentsRead,
        Permission::DocumentsWrite,
        Permission::UsageRead,
        Permission::AuditRead,
    ];

    /// The app role value, and the delegated scope name (they are the same string).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::PlatformAdmin => "Platform.Admin",
            Permission::TenantAdmin => "Tenant.Admin",
            Permission::DocumentsRead => "Documents.Read",
            Permission::DocumentsWrite => "Documents.Write",
            Permission::UsageRead => "Usage.Read",
            Permission::AuditRead => "Audit.Read",
        }
    }

    pub fn parse(raw: &str) -> Option<Permission> {
        Permission::ALL.iter().copied().find(|p| p.as_str() == raw)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Least privilege: no permission implies another unless it is written here. (Currently none does: a
/// writer that must read asks for both roles, and a platform admin reads no tenant's documents.)
pub const IMPLIES: &[(Permission, Permission)] = &[];

/// The effective permissions of a caller, after [`IMPLIES`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionSet(u8);

impl PermissionSet {
    pub const EMPTY: PermissionSet = PermissionSet(0);

    fn bit(p: Permission) -> u8 {
        1 << Permission::ALL.iter().position(|q| *q == p).expect("every permission is in ALL")
    }

    /// Builds the set from role or scope strings; unknown strings are ignored (other APIs' roles).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = names.into_iter().filter_map(Permission::parse).fold(Self::EMPTY, |s, p| s.with(p));
        // Apply the implication table to a fixed point.
        loop {
            let before = set;
            for (granted, implied) in IMPLIES {
                if set.contains(*granted) {
                    set = set.with(*implied);
                }
            }
            if set == before {
                return set;
            }
        }
    }

    pub fn with(self, p: Permission) -> Self {
        PermissionSet(self.0 | Self::bit(p))
    }

    pub fn without(self, p: Permission) -> Self {
        PermissionSet(self.0 & !Self::bit(p))
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & Self::bit(p) != 0
    }

    /// Both sets at once: a registered API client never exceeds what its registration grants.
    pub fn intersect(self, other: PermissionSet) -> Self {
        PermissionSet(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.iter().copied().filter(move |p| self.contains(*p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_ignored() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(*p));
        }
        let set = PermissionSet::from_names(["Documents.Read", "Mail.Send", "documents.write"]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Permission::DocumentsRead], "exact, case-sensitive names");
    }

    #[test]
    fn no_permission_implies_another() {
        for p in Permission::ALL {
            assert_eq!(PermissionSet::from_names([p.as_str()]).iter().count(), 1, "{p} implies nothing");
        }
    }

    #[test]
    fn intersection_limits_a_registered_client() {
        let token = PermissionSet::from_names(["Documents.Read", "Documents.Write", "Audit.Read"]);
        let granted = PermissionSet::from_names(["Documents.Read"]);
        assert_eq!(token.intersect(granted).iter().collect::<Vec<_>>(), vec![Permission::DocumentsRead]);
    }
}
