//! The auth store: users, roles, their permissions and whether auth is enabled, with etcd's
//! rules for each change. Changes arrive through raft (the apply thread calls the `*_mut`
//! operations with the batch of the entry being applied), so every member holds the same
//! store; each one persists into the `meta` column family, which raft snapshots and
//! `snapshot save` carry.
//!
//! Passwords reach the store already hashed: bcrypt salts at random, so the API layer hashes
//! before proposing, as etcd does, and every member stores the same hash.
//!
//! Every change that can alter what a token may do bumps the store's revision; a token issued
//! at an older revision is refused (`revision of auth store is old`) and clients
//! re-authenticate.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message as _;

use super::perms::{Access, KeyPermissions};
use super::requests::Need;
use super::tokens::SimpleTokens;
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::storage::{Batch, Cf, Engine, StorageError};

/// The user and role with full access; auth can be enabled only when the user holds the role.
pub const ROOT: &str = "root";

/// Meta keys of the store (read by `snapshot::etcd_export` too): the enabled flag (`[1]` or
/// `[0]`, written by the first enable or disable), the revision (BE u64), and one key per user
/// and role (the name after the prefix, a marshalled `authpb.User` or `authpb.Role`).
pub const KEY_ENABLED: &[u8] = b"auth/enabled";
pub const KEY_REVISION: &[u8] = b"auth/revision";
pub const USER_PREFIX: &[u8] = b"auth/user/";
pub const ROLE_PREFIX: &[u8] = b"auth/role/";

/// Why the store refused a change or a lookup. Plain data; `api/error.rs` gives each etcd's
/// code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user name is empty")]
    UserEmpty,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} not found")]
    UserNotFound(String),
    #[error("role name is empty")]
    RoleEmpty,
    #[error("role {0:?} already exists")]
    RoleExists(String),
    #[error("role {0:?} not found")]
    RoleNotFound(String),
    #[error("role {role:?} is not granted to user {user:?}")]
    RoleNotGranted { user: String, role: String },
    #[error("permission on {key:?} is not granted to role {role:?}")]
    PermissionNotGranted { role: String, key: Vec<u8> },
    #[error("user root does not exist")]
    RootUserMissing,
    #[error("user root does not have role root")]
    RootRoleMissing,
    #[error("no permission given")]
    PermissionMissing,
    #[error("permission denied")]
    PermissionDenied,
    /// The caller's token was issued before the latest auth change; it must authenticate again.
    #[error("the token's auth revision is older than the store's")]
    OldRevision,
    #[error("authentication failed")]
    AuthFailed,
    /// Removing root's access while auth is enabled would lock everyone out.
    #[error("this change would remove root's access while auth is enabled")]
    InvalidManagement,
}

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// The auth store of one member, and the tokens it issued.
#[derive(Debug, Default)]
pub struct AuthStore {
    state: RwLock<State>,
    tokens: SimpleTokens,
}

fn corrupt(key: &[u8], reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        cf: Cf::Meta.name(),
        key: key.to_vec(),
        reason: reason.to_string(),
    }
}

fn prefixed(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// The first key after every key starting with `prefix` (prefixes here end below 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl AuthStore {
    /// Loads the persisted store (empty and disabled on a new member).
    pub fn open(engine: &Engine) -> Result<AuthStore, StorageError> {
        let mut state = State {
            enabled: engine.get(Cf::Meta, KEY_ENABLED)?.as_deref() == Some(&[1]),
            ..State::default()
        };
        if let Some(bytes) = engine.get(Cf::Meta, KEY_REVISION)? {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(KEY_REVISION, "not 8 bytes"))?;
            state.revision = u64::from_be_bytes(bytes);
        }
        for entry in engine.scan(Cf::Meta, USER_PREFIX, Some(&prefix_end(USER_PREFIX))) {
            let (key, value) = entry?;
            let user = User::decode(&*value).map_err(|e| corrupt(&key, e))?;
            state
                .users
                .insert(String::from_utf8_lossy(&user.name).into_owned(), user);
        }
        for entry in engine.scan(Cf::Meta, ROLE_PREFIX, Some(&prefix_end(ROLE_PREFIX))) {
            let (key, value) = entry?;
            let role = Role::decode(&*value).map_err(|e| corrupt(&key, e))?;
            state
                .roles
                .insert(String::from_utf8_lossy(&role.name).into_owned(), role);
        }
        Ok(AuthStore {
            state: RwLock::new(state),
            tokens: SimpleTokens::default(),
        })
    }

    /// Tokens live `ttl` after their last use (etcd's `--auth-token-ttl`).
    pub fn with_token_ttl(mut self, ttl: std::time::Duration) -> AuthStore {
        self.tokens = SimpleTokens::new(ttl);
        self
    }

    /// The simple tokens this member issued or learnt through raft.
    pub fn tokens(&self) -> &SimpleTokens {
        &self.tokens
    }

    /// Whether `user`, holding a token of auth `revision`, may do what `needs` lists (and, with
    /// `admin`, what only root may). Everything is allowed while auth is disabled.
    pub fn check(
        &self,
        user: &str,
        revision: u64,
        needs: &[Need],
        admin: bool,
    ) -> Result<(), AuthError> {
        let state = self.read();
        if !state.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if revision < state.revision {
            return Err(AuthError::OldRevision);
        }
        let Some(u) = state.users.get(user) else {
            return Err(AuthError::PermissionDenied);
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        if admin {
            return Err(AuthError::PermissionDenied);
        }
        let perms = KeyPermissions::from_permissions(
            u.roles
                .iter()
                .filter_map(|r| state.roles.get(r))
                .flat_map(|role| role.key_permission.iter()),
        );
        if needs
            .iter()
            .all(|n| perms.permits(&n.key, &n.range_end, n.access))
        {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Assigns `token` to `user` (an Authenticate entry being applied; the password was checked
    /// by the member that proposed it). A user deleted in the meantime gets none.
    pub fn issue_token(
        &self,
        user: &str,
        token: &str,
        now: std::time::Instant,
    ) -> Result<(), AuthError> {
        let state = self.read();
        if !state.users.contains_key(user) {
            return Err(AuthError::AuthFailed);
        }
        self.tokens.assign(token, user, now);
        Ok(())
    }

    /// Reloads the persisted store (after a raft snapshot replaced it).
    pub fn reload(&self, engine: &Engine) -> Result<(), StorageError> {
        let fresh = AuthStore::open(engine)?;
        *self.write() = fresh
            .state
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_enabled(&self) -> bool {
        self.read().enabled
    }

    /// The store's revision: how many changes it has taken.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// A user's name, password hash, roles and options.
    pub fn user(&self, name: &str) -> Result<User, AuthError> {
        self.read()
            .users
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::UserNotFound(name.to_owned()))
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.read().users.keys().cloned().collect()
    }

    /// A role and its permissions.
    pub fn role(&self, name: &str) -> Result<Role, AuthError> {
        self.read()
            .roles
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::RoleNotFound(name.to_owned()))
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.read().roles.keys().cloned().collect()
    }

    /// Whether `user` holds the root role (admin RPCs need it).
    pub fn is_admin(&self, user: &str) -> bool {
        self.read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// What `user` may read and write: the union of its roles' permissions; root may do
    /// anything. An unknown user may do nothing.
    pub fn permissions_of(&self, user: &str) -> KeyPermissions {
        let state = self.read();
        let Some(u) = state.users.get(user) else {
            return KeyPermissions::default();
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return KeyPermissions::everything();
        }
        KeyPermissions::from_permissions(
            u.roles
                .iter()
                .filter_map(|r| state.roles.get(r))
                .flat_map(|role| role.key_permission.iter()),
        )
    }

    /// Whether `user` may `access` `key`/`range_end`.
    pub fn permits(&self, user: &str, key: &[u8], range_end: &[u8], access: Access) -> bool {
        self.permissions_of(user).permits(key, range_end, access)
    }

    // The changes, applied through raft. Each persists into `batch` and bumps the revision.

    pub fn enable_mut(&self, engine: &Engine, batch: &mut Batch) -> Result<(), AuthError> {
        let mut state = self.write();
        if state.enabled {
            return Ok(());
        }
        let root = state.users.get(ROOT).ok_or(AuthError::RootUserMissing)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(AuthError::RootRoleMissing);
        }
        state.enabled = true;
        batch.put(engine, Cf::Meta, KEY_ENABLED, &[1]);
        bump(&mut state, engine, batch);
        Ok(())
    }

    pub fn disable_mut(&self, engine: &Engine, batch: &mut Batch) {
        let mut state = self.write();
        if !state.enabled {
            return;
        }
        state.enabled = false;
        batch.put(engine, Cf::Meta, KEY_ENABLED, &[0]);
        bump(&mut state, engine, batch);
    }

    /// Adds a user with an already hashed password (empty with `no_password`).
    pub fn user_add_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        name: &str,
        password_hash: &[u8],
        no_password: bool,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let mut state = self.write();
        if state.users.contains_key(name) {
            return Err(AuthError::UserExists(name.to_owned()));
        }
        let user = User {
            name: name.as_bytes().to_vec(),
            password: if no_password {
                Vec::new()
            } else {
                password_hash.to_vec()
            },
            roles: Vec::new(),
            options: Some(UserAddOptions { no_password }),
        };
        put_user(&mut state, engine, batch, user);
        bump(&mut state, engine, batch);
        Ok(())
    }

    pub fn user_delete_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        name: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        if state.enabled && name == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        if state.users.remove(name).is_none() {
            return Err(AuthError::UserNotFound(name.to_owned()));
        }
        batch.delete(engine, Cf::Meta, &prefixed(USER_PREFIX, name));
        bump(&mut state, engine, batch);
        self.tokens.invalidate_user(name);
        Ok(())
    }

    pub fn user_change_password_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        name: &str,
        password_hash: &[u8],
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        let mut user = state
            .users
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::UserNotFound(name.to_owned()))?;
        user.password = password_hash.to_vec();
        put_user(&mut state, engine, batch, user);
        bump(&mut state, engine, batch);
        self.tokens.invalidate_user(name);
        Ok(())
    }

    /// Grants `role` to `user`; granting a role the user holds changes nothing (as in etcd).
    /// `root` may be granted before the role exists.
    pub fn user_grant_role_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        user: &str,
        role: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        let mut u = state
            .users
            .get(user)
            .cloned()
            .ok_or_else(|| AuthError::UserNotFound(user.to_owned()))?;
        if role != ROOT && !state.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound(role.to_owned()));
        }
        let Err(at) = u.roles.binary_search_by(|r| r.as_str().cmp(role)) else {
            return Ok(());
        };
        u.roles.insert(at, role.to_owned());
        put_user(&mut state, engine, batch, u);
        bump(&mut state, engine, batch);
        Ok(())
    }

    pub fn user_revoke_role_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        user: &str,
        role: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        if state.enabled && user == ROOT && role == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        let mut u = state
            .users
            .get(user)
            .cloned()
            .ok_or_else(|| AuthError::UserNotFound(user.to_owned()))?;
        let Some(at) = u.roles.iter().position(|r| r == role) else {
            return Err(AuthError::RoleNotGranted {
                user: user.to_owned(),
                role: role.to_owned(),
            });
        };
        u.roles.remove(at);
        put_user(&mut state, engine, batch, u);
        bump(&mut state, engine, batch);
        Ok(())
    }

    pub fn role_add_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        name: &str,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        let mut state = self.write();
        if state.roles.contains_key(name) {
            return Err(AuthError::RoleExists(name.to_owned()));
        }
        let role = Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        };
        put_role(&mut state, engine, batch, role);
        bump(&mut state, engine, batch);
        Ok(())
    }

    /// Deletes a role and takes it from every user holding it.
    pub fn role_delete_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        name: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        if state.enabled && name == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        if state.roles.remove(name).is_none() {
            return Err(AuthError::RoleNotFound(name.to_owned()));
        }
        batch.delete(engine, Cf::Meta, &prefixed(ROLE_PREFIX, name));
        let holders: Vec<User> = state
            .users
            .values()
            .filter(|u| u.roles.iter().any(|r| r == name))
            .cloned()
            .collect();
        for mut user in holders {
            user.roles.retain(|r| r != name);
            put_user(&mut state, engine, batch, user);
        }
        bump(&mut state, engine, batch);
        Ok(())
    }

    /// Grants `permission` to `role`; a grant on the same key and range end replaces the
    /// earlier one's type. Permissions stay sorted by key, then range end.
    pub fn role_grant_permission_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        role: &str,
        permission: Permission,
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        let mut r = state
            .roles
            .get(role)
            .cloned()
            .ok_or_else(|| AuthError::RoleNotFound(role.to_owned()))?;
        let position = r.key_permission.binary_search_by(|p| {
            (p.key.as_slice(), p.range_end.as_slice())
                .cmp(&(permission.key.as_slice(), permission.range_end.as_slice()))
        });
        match position {
            Ok(at) => r.key_permission[at].perm_type = permission.perm_type,
            Err(at) => r.key_permission.insert(at, permission),
        }
        put_role(&mut state, engine, batch, r);
        bump(&mut state, engine, batch);
        Ok(())
    }

    pub fn role_revoke_permission_mut(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let mut state = self.write();
        let mut r = state
            .roles
            .get(role)
            .cloned()
            .ok_or_else(|| AuthError::RoleNotFound(role.to_owned()))?;
        let Some(at) = r
            .key_permission
            .iter()
            .position(|p| p.key == key && p.range_end == range_end)
        else {
            return Err(AuthError::PermissionNotGranted {
                role: role.to_owned(),
                key: key.to_vec(),
            });
        };
        r.key_permission.remove(at);
        put_role(&mut state, engine, batch, r);
        bump(&mut state, engine, batch);
        Ok(())
    }
}

/// Writes a whole auth store (the enabled flag, the auth revision, users and roles) into `batch`
/// as the store itself persists them, for a data directory built from elsewhere (an imported
/// etcd snapshot); [`AuthStore::open`] loads it. Passwords stay the bcrypt hashes they are.
pub fn write_imported(
    engine: &Engine,
    batch: &mut Batch,
    enabled: bool,
    revision: u64,
    users: Vec<User>,
    roles: Vec<Role>,
) {
    let mut state = State::default();
    batch.put(engine, Cf::Meta, KEY_ENABLED, &[u8::from(enabled)]);
    batch.put(engine, Cf::Meta, KEY_REVISION, &revision.to_be_bytes());
    for user in users {
        put_user(&mut state, engine, batch, user);
    }
    for role in roles {
        put_role(&mut state, engine, batch, role);
    }
}

fn put_user(state: &mut State, engine: &Engine, batch: &mut Batch, user: User) {
    let name = String::from_utf8_lossy(&user.name).into_owned();
    batch.put(
        engine,
        Cf::Meta,
        &prefixed(USER_PREFIX, &name),
        &user.encode_to_vec(),
    );
    state.users.insert(name, user);
}

fn put_role(state: &mut State, engine: &Engine, batch: &mut Batch, role: Role) {
    let name = String::from_utf8_lossy(&role.name).into_owned();
    batch.put(
        engine,
        Cf::Meta,
        &prefixed(ROLE_PREFIX, &name),
        &role.encode_to_vec(),
    );
    state.roles.insert(name, role);
}

fn bump(state: &mut State, engine: &Engine, batch: &mut Batch) {
    state.revision += 1;
    batch.put(
        engine,
        Cf::Meta,
        KEY_REVISION,
        &state.revision.to_be_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::authpb::permission::Type as PermissionType;

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Arc<Engine>,
        store: AuthStore,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path(), false).unwrap();
            let store = AuthStore::open(&engine).unwrap();
            Fixture {
                _dir: dir,
                engine,
                store,
            }
        }

        /// Applies one change as the apply thread would: in a batch, then written.
        fn apply<T>(&self, change: impl FnOnce(&AuthStore, &Engine, &mut Batch) -> T) -> T {
            let mut batch = Batch::new();
            let outcome = change(&self.store, &self.engine, &mut batch);
            self.engine.write(batch, false).unwrap();
            outcome
        }

        fn reopened(&self) -> AuthStore {
            AuthStore::open(&self.engine).unwrap()
        }
    }

    fn permission(kind: PermissionType, key: &str, range_end: &str) -> Permission {
        let mut p = Permission {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Permission::default()
        };
        p.set_perm_type(kind);
        p
    }

    #[test]
    fn enable_needs_root_with_the_root_role() {
        let f = Fixture::new();
        assert_eq!(
            f.apply(|s, e, b| s.enable_mut(e, b)),
            Err(AuthError::RootUserMissing)
        );
        f.apply(|s, e, b| s.user_add_mut(e, b, ROOT, b"hash", false))
            .unwrap();
        assert_eq!(
            f.apply(|s, e, b| s.enable_mut(e, b)),
            Err(AuthError::RootRoleMissing)
        );
        // root may be granted before the role exists (etcdctl's `auth enable` does this).
        f.apply(|s, e, b| s.user_grant_role_mut(e, b, ROOT, ROOT))
            .unwrap();
        f.apply(|s, e, b| s.enable_mut(e, b)).unwrap();
        assert!(f.store.is_enabled());
        assert!(f.reopened().is_enabled());
        // Root's access cannot be removed while auth is on.
        assert_eq!(
            f.apply(|s, e, b| s.user_revoke_role_mut(e, b, ROOT, ROOT)),
            Err(AuthError::InvalidManagement)
        );
        assert_eq!(
            f.apply(|s, e, b| s.user_delete_mut(e, b, ROOT)),
            Err(AuthError::InvalidManagement)
        );
        f.apply(|s, e, b| s.disable_mut(e, b));
        assert!(!f.reopened().is_enabled());
        f.apply(|s, e, b| s.user_delete_mut(e, b, ROOT)).unwrap();
    }

    #[test]
    fn users_and_roles_refuse_empty_duplicate_and_unknown_names() {
        let f = Fixture::new();
        assert_eq!(
            f.apply(|s, e, b| s.user_add_mut(e, b, "", b"h", false)),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            f.apply(|s, e, b| s.role_add_mut(e, b, "")),
            Err(AuthError::RoleEmpty)
        );
        f.apply(|s, e, b| s.user_add_mut(e, b, "alice", b"h", false))
            .unwrap();
        assert_eq!(
            f.apply(|s, e, b| s.user_add_mut(e, b, "alice", b"h", false)),
            Err(AuthError::UserExists("alice".into()))
        );
        assert_eq!(
            f.apply(|s, e, b| s.user_grant_role_mut(e, b, "alice", "readers")),
            Err(AuthError::RoleNotFound("readers".into()))
        );
        assert_eq!(
            f.apply(|s, e, b| s.user_grant_role_mut(e, b, "bob", ROOT)),
            Err(AuthError::UserNotFound("bob".into()))
        );
        f.apply(|s, e, b| s.role_add_mut(e, b, "readers")).unwrap();
        assert_eq!(
            f.apply(|s, e, b| s.role_add_mut(e, b, "readers")),
            Err(AuthError::RoleExists("readers".into()))
        );
        assert_eq!(
            f.apply(|s, e, b| s.user_revoke_role_mut(e, b, "alice", "readers")),
            Err(AuthError::RoleNotGranted {
                user: "alice".into(),
                role: "readers".into()
            })
        );
        assert_eq!(
            f.apply(|s, e, b| s.role_revoke_permission_mut(e, b, "readers", b"k", b"")),
            Err(AuthError::PermissionNotGranted {
                role: "readers".into(),
                key: b"k".to_vec()
            })
        );
    }

    #[test]
    fn permissions_follow_grants_roles_and_deletions_and_survive_a_restart() {
        let f = Fixture::new();
        f.apply(|s, e, b| s.user_add_mut(e, b, "alice", b"h", false))
            .unwrap();
        f.apply(|s, e, b| s.role_add_mut(e, b, "app")).unwrap();
        f.apply(|s, e, b| {
            s.role_grant_permission_mut(
                e,
                b,
                "app",
                permission(PermissionType::Read, "app/", "app0"),
            )
        })
        .unwrap();
        f.apply(|s, e, b| s.user_grant_role_mut(e, b, "alice", "app"))
            .unwrap();
        assert!(f.store.permits("alice", b"app/x", b"", Access::Read));
        assert!(!f.store.permits("alice", b"app/x", b"", Access::Write));

        // Re-granting the same range replaces its type.
        f.apply(|s, e, b| {
            s.role_grant_permission_mut(
                e,
                b,
                "app",
                permission(PermissionType::Readwrite, "app/", "app0"),
            )
        })
        .unwrap();
        assert_eq!(f.store.role("app").unwrap().key_permission.len(), 1);
        assert!(f.store.permits("alice", b"app/x", b"", Access::Write));

        let reopened = f.reopened();
        assert_eq!(reopened.revision(), f.store.revision());
        assert!(reopened.permits("alice", b"app/", b"app0", Access::Write));
        assert_eq!(reopened.user_names(), ["alice"]);
        assert_eq!(reopened.role_names(), ["app"]);

        // Deleting the role takes it from its holders.
        f.apply(|s, e, b| s.role_delete_mut(e, b, "app")).unwrap();
        assert!(f.store.user("alice").unwrap().roles.is_empty());
        assert!(!f.reopened().permits("alice", b"app/x", b"", Access::Read));
    }

    #[test]
    fn root_may_do_anything_and_strangers_nothing() {
        let f = Fixture::new();
        f.apply(|s, e, b| s.user_add_mut(e, b, ROOT, b"h", false))
            .unwrap();
        f.apply(|s, e, b| s.user_grant_role_mut(e, b, ROOT, ROOT))
            .unwrap();
        assert!(f.store.is_admin(ROOT));
        assert!(f.store.permits(ROOT, b"", b"\0", Access::Write));
        assert!(!f.store.is_admin("nobody"));
        assert!(!f.store.permits("nobody", b"k", b"", Access::Read));
    }

    #[test]
    fn every_change_bumps_the_revision_and_refusals_do_not() {
        let f = Fixture::new();
        assert_eq!(f.store.revision(), 0);
        f.apply(|s, e, b| s.user_add_mut(e, b, "alice", b"h", false))
            .unwrap();
        f.apply(|s, e, b| s.user_change_password_mut(e, b, "alice", b"h2"))
            .unwrap();
        assert_eq!(f.store.revision(), 2);
        let _ = f.apply(|s, e, b| s.user_add_mut(e, b, "alice", b"h", false));
        // Granting a role already held is not a change.
        f.apply(|s, e, b| s.user_grant_role_mut(e, b, "alice", ROOT))
            .unwrap();
        f.apply(|s, e, b| s.user_grant_role_mut(e, b, "alice", ROOT))
            .unwrap();
        assert_eq!(f.store.revision(), 3);
        assert_eq!(f.store.user("alice").unwrap().password, b"h2");
    }
}

/// Properties of the persisted auth store: a written store loads back, permission checks over
/// random grants never panic, and damaged records are errors. One engine for all cases; 64
/// cases each, about a second in release.
#[cfg(test)]
mod props {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::auth::perms::Access;
    use crate::proto::authpb::{Permission, UserAddOptions};

    fn clear(engine: &Engine) {
        let mut batch = Batch::new();
        batch.delete_range(engine, Cf::Meta, b"auth/", b"auth0");
        engine.write(batch, false).unwrap();
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![vec(any::<u8>(), 0..4), Just(vec![0]), Just(Vec::new())]
    }

    fn role() -> impl Strategy<Value = Role> {
        ("[a-z]{1,6}", vec((0..4i32, key(), key()), 0..4)).prop_map(|(name, perms)| Role {
            name: name.into_bytes(),
            key_permission: perms
                .into_iter()
                .map(|(perm_type, key, range_end)| Permission {
                    perm_type,
                    key,
                    range_end,
                })
                .collect(),
        })
    }

    fn user() -> impl Strategy<Value = User> {
        (
            "[a-z]{1,6}",
            vec(any::<u8>(), 0..8),
            vec("[a-z]{1,6}", 0..3),
            any::<bool>(),
        )
            .prop_map(|(name, password, roles, no_password)| User {
                name: name.into_bytes(),
                password,
                roles,
                options: Some(UserAddOptions { no_password }),
            })
    }

    #[test]
    fn written_stores_load_back_and_answer_permission_checks() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        proptest!(ProptestConfig::with_cases(64), |(
            enabled in any::<bool>(),
            revision in any::<u64>(),
            users in vec(user(), 0..4),
            roles in vec(role(), 0..4),
            probes in vec((key(), key(), any::<bool>()), 0..8),
        )| {
            clear(&engine);
            let mut batch = Batch::new();
            write_imported(&engine, &mut batch, enabled, revision, users.clone(), roles.clone());
            engine.write(batch, false).unwrap();
            let store = AuthStore::open(&engine).unwrap();
            prop_assert_eq!(store.is_enabled(), enabled);
            prop_assert_eq!(store.revision(), revision);
            for user in &users {
                let name = String::from_utf8(user.name.clone()).unwrap();
                // The last user written under a name is the one kept.
                let last = users.iter().rev().find(|u| u.name == user.name).unwrap();
                prop_assert_eq!(&store.user(&name).unwrap(), last);
                for (key, range_end, write) in &probes {
                    let access = if *write { Access::Write } else { Access::Read };
                    let _ = store.permits(&name, key, range_end, access);
                }
            }
            for role in &roles {
                let name = String::from_utf8(role.name.clone()).unwrap();
                let last = roles.iter().rev().find(|r| r.name == role.name).unwrap();
                prop_assert_eq!(&store.role(&name).unwrap(), last);
            }
        });
    }

    #[test]
    fn damaged_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        proptest!(ProptestConfig::with_cases(64), |(
            user in user(),
            role in role(),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            revision in vec(any::<u8>(), 0..10),
        )| {
            clear(&engine);
            let mut damaged_user = user.encode_to_vec();
            let mut damaged_role = role.encode_to_vec();
            for (at, byte) in flips {
                let i = at.index(damaged_user.len());
                damaged_user[i] = byte;
                let i = at.index(damaged_role.len());
                damaged_role[i] = byte;
            }
            let mut batch = Batch::new();
            batch.put(&engine, Cf::Meta, &prefixed(USER_PREFIX, "u"), &damaged_user);
            batch.put(&engine, Cf::Meta, &prefixed(ROLE_PREFIX, "r"), &damaged_role);
            batch.put(&engine, Cf::Meta, KEY_REVISION, &revision);
            engine.write(batch, false).unwrap();
            match AuthStore::open(&engine) {
                Ok(store) => {
                    prop_assert_eq!(revision.len(), 8);
                    for name in store.user_names() {
                        let _ = store.permits(&name, b"a", b"", Access::Read);
                    }
                }
                Err(StorageError::Corrupt { key, .. }) => {
                    prop_assert!(key.starts_with(b"auth/"), "{:?}", key);
                }
                Err(other) => prop_assert!(false, "unexpected error {}", other),
            }
        });
    }
}
