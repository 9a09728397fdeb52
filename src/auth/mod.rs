//! etcd's role-based access control, as a state machine beside `lease` and `alarm`.
//!
//! [`store`] holds users, roles and whether auth is enabled, changed through raft with etcd's
//! rules and persisted in `meta`; [`perms`] decides whether a user's roles grant read or write
//! access to a key or key range, the check every KV, Watch and Lease RPC makes once auth is
//! enabled. Tokens and the Auth service build on these (issue 11); nothing calls them yet.

pub mod perms;
pub mod store;

pub use perms::{Access, KeyPermissions};
pub use store::{AuthError, AuthStore, ROOT};
