//! etcd's role-based access control, as a state machine beside `lease` and `alarm`.
//!
//! [`store`] holds users, roles and whether auth is enabled, changed through raft with etcd's
//! rules and persisted in `meta`; [`perms`] decides whether a user's roles grant read or write
//! access to a key or key range, the check every KV, Watch and Lease RPC makes once auth is
//! enabled; [`requests`] lists what each request needs; [`tokens`] keeps etcd's `simple` tokens
//! and [`jwt`] signs and verifies its `jwt` ones. The Auth service (`api/auth.rs`) manages the
//! store.

pub mod jwt;
pub mod perms;
pub mod requests;
pub mod store;
pub mod tokens;

pub use perms::{Access, KeyPermissions};
pub use store::{AuthError, AuthStore, ROOT};
