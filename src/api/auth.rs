//! etcd's Auth service: enabling auth, authenticating, users, roles and their key permissions.
//!
//! Every change goes through raft as an `oxetcdpb.AuthChange` (the apply thread runs etcd's
//! rules in `auth::store` and checks the caller is root), so every member holds the same store;
//! reads wait for a read barrier first, so they see every change acknowledged before them.
//! Passwords are hashed here with bcrypt before proposing and never logged. Authenticate checks
//! the password here and proposes a simple token, so every member knows it, or signs a JWT,
//! which every member can verify.

use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx, blocking};
use crate::auth::AuthError;
use crate::auth::tokens::token_letters;
use crate::node::{IssueToken, Origin};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::oxetcdpb::auth_change::Change;
use crate::proto::oxetcdpb::{self, AuthChange, Caller};

pub struct AuthService {
    ctx: ServerCtx,
}

impl AuthService {
    pub fn new(ctx: ServerCtx) -> AuthService {
        AuthService { ctx }
    }

    /// Proposes `change` for `caller` and waits until it is applied here (where the caller's
    /// right to make it is checked); answers the header to send.
    async fn change(&self, caller: Caller, change: Change) -> Result<ResponseHeader, Status> {
        self.ctx
            .node
            .propose(
                AuthChange {
                    change: Some(change),
                },
                Origin::Client(caller),
            )
            .await
            .map_err(EtcdError::from)?;
        Ok(self.ctx.header_now())
    }

    /// Waits until this member has applied every change acknowledged before the call.
    async fn barrier(&self) -> Result<(), Status> {
        self.ctx
            .node
            .read_barrier()
            .await
            .map_err(|e| Status::from(EtcdError::from(e)))
    }
}

fn refused(e: AuthError) -> Status {
    EtcdError::from(e).into()
}

/// The bcrypt hash of `password` at `cost` (`--bcrypt-cost`; off the async workers: a hash
/// takes tens of milliseconds at the default 10), or the client's own `hashed` one when it sent
/// that instead (etcd 3.5+ clients may).
async fn password_hash(password: String, hashed: String, cost: u32) -> Result<String, Status> {
    if !hashed.is_empty() {
        return Ok(hashed);
    }
    blocking(move || {
        bcrypt::hash(password, cost)
            .map_err(|e| EtcdError::Other(format!("hashing the password failed: {e}")))
    })
    .await
    .map_err(Status::from)
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let header = self
            .change(caller, Change::Enable(AuthEnableRequest {}))
            .await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::Disable(AuthDisableRequest {}))
            .await?;
        tracing::info!("authentication disabled");
        Ok(Response::new(AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.barrier().await?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.ctx.header_now()),
            enabled: self.ctx.auth.is_enabled(),
            auth_revision: self.ctx.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        if !self.ctx.auth.is_enabled() {
            return Err(EtcdError::AuthNotEnabled.into());
        }
        let AuthenticateRequest { name, password } = request.into_inner();
        // Any failure reads the same to the client: which part was wrong is not its business.
        let user = self
            .ctx
            .auth
            .user(&name)
            .map_err(|_| EtcdError::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(EtcdError::AuthFailed.into());
        }
        let hash = String::from_utf8(user.password).map_err(|_| EtcdError::AuthFailed)?;
        let matches =
            blocking(move || Ok(bcrypt::verify(password, &hash).unwrap_or(false))).await?;
        if !matches {
            tracing::info!(user = %name, "authentication failed: wrong password");
            return Err(EtcdError::AuthFailed.into());
        }
        if let Some(jwt) = &self.ctx.jwt {
            // Signed here, with the auth revision as of every change acknowledged before now.
            self.barrier().await?;
            let token = jwt
                .sign(
                    &name,
                    self.ctx.auth.revision(),
                    std::time::SystemTime::now(),
                )
                .map_err(|e| EtcdError::Other(format!("auth: {e}")))?;
            return Ok(Response::new(AuthenticateResponse {
                header: Some(self.ctx.header_now()),
                token,
            }));
        }
        let token = self
            .ctx
            .node
            .propose(
                IssueToken(oxetcdpb::IssueToken {
                    user: name,
                    letters: token_letters(),
                }),
                Origin::Member,
            )
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(AuthenticateResponse {
            header: Some(self.ctx.header_now()),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(refused(AuthError::UserEmpty));
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hashed_password = if no_password {
            String::new()
        } else {
            password_hash(r.password, r.hashed_password, self.ctx.config.bcrypt_cost).await?
        };
        let header = self
            .change(
                caller,
                Change::UserAdd(AuthUserAddRequest {
                    name: r.name,
                    password: String::new(),
                    options: r.options,
                    hashed_password,
                }),
            )
            .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        // A user may look itself up; anyone else is root's business.
        let caller = self.ctx.caller(&request).await?;
        let name = request.into_inner().name;
        if caller.user != name || caller.user.is_empty() {
            self.ctx.permit(&caller, &[], true)?;
        }
        self.barrier().await?;
        let user = self.ctx.auth.user(&name).map_err(refused)?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.ctx.header_now()),
            roles: user.roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.ctx.admin(&request).await?;
        self.barrier().await?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.ctx.header_now()),
            users: self.ctx.auth.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::UserDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let r = request.into_inner();
        // An unknown user is refused before paying for a hash; apply checks again.
        self.ctx.auth.user(&r.name).map_err(refused)?;
        let hashed_password =
            password_hash(r.password, r.hashed_password, self.ctx.config.bcrypt_cost).await?;
        let header = self
            .change(
                caller,
                Change::UserChangePassword(AuthUserChangePasswordRequest {
                    name: r.name,
                    password: String::new(),
                    hashed_password,
                }),
            )
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::UserGrantRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::UserRevokeRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::RoleAdd(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        // A user may look up a role it holds (as in etcd); anyone else is root's business.
        let caller = self.ctx.caller(&request).await?;
        let name = request.into_inner().role;
        let holds = self
            .ctx
            .auth
            .user(&caller.user)
            .is_ok_and(|user| user.roles.contains(&name));
        if !holds {
            self.ctx.permit(&caller, &[], true)?;
        }
        self.barrier().await?;
        let role = self.ctx.auth.role(&name).map_err(refused)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.ctx.header_now()),
            perm: role.key_permission,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.ctx.admin(&request).await?;
        self.barrier().await?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.ctx.header_now()),
            roles: self.ctx.auth.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::RoleDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let r = request.into_inner();
        if r.perm.is_none() {
            return Err(refused(AuthError::PermissionMissing));
        }
        let header = self.change(caller, Change::RoleGrantPermission(r)).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.ctx.admin(&request).await?;
        let header = self
            .change(caller, Change::RoleRevokePermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
