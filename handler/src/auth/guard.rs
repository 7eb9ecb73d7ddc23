//! The request side of auth: the `/api/v1` middleware that turns a bearer token into a [`Caller`], and the
//! [`Authorized<P>`] extractor that puts each operation's required permission in its handler's signature.
//!
//! The middleware runs before any handler extractor, so an unauthenticated request never learns whether
//! its body or query was valid. `Authorized<P>` then only checks the permission: synchronous, so it also
//! answers before a body extractor listed after it.

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use uuid::Uuid;

use super::{AuthError, Permission, PermissionSet, Principal};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::store::{ApiClient, ClientLimits, ClientStatus, Tenant, TenantStatus};

/// The realm in `WWW-Authenticate` challenges.
const REALM: &str = "meterline";

/// Who is calling, in which tenant, with which effective permissions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// `None` only for platform administrators whose directory maps to no tenant.
    pub tenant: Option<Tenant>,
    /// The registered API client the call came through, if any.
    pub api_client_id: Option<Uuid>,
    /// That registration's caps on the client's share of the tenant's limits (none without a registration).
    pub client_limits: ClientLimits,
    pub permissions: PermissionSet,
}

impl Caller {
    /// The tenant every data access is scoped to; a caller without one cannot use tenant resources.
    pub fn tenant_id(&self) -> Result<Uuid, AppError> {
        self.tenant.as_ref().map(|t| t.id).ok_or_else(|| {
            AppError::new(ErrorCode::UnknownTenant)
                .with_detail("this operation works on a tenant's data and the caller belongs to no tenant")
        })
    }
}

/// A permission requirement, as a type: `Authorized<DocumentsRead>` in a handler's signature.
pub trait Policy {
    /// `None`: any authenticated caller.
    const PERMISSION: Option<Permission>;
}

macro_rules! policies {
    ($($name:ident => $permission:expr),+ $(,)?) => {
        $(
            #[doc = concat!("Requires `", stringify!($name), "`.")]
            #[derive(Debug)]
            pub struct $name;
            impl Policy for $name {
                const PERMISSION: Option<Permission> = $permission;
            }
        )+
    };
}

policies! {
    Authenticated => None,
    PlatformAdmin => Some(Permission::PlatformAdmin),
    TenantAdmin => Some(Permission::TenantAdmin),
    DocumentsRead => Some(Permission::DocumentsRead),
    DocumentsWrite => Some(Permission::DocumentsWrite),
    UsageRead => Some(Permission::UsageRead),
    AuditRead => Some(Permission::AuditRead),
}

/// An authenticated caller who holds `P`'s permission.
#[derive(Debug)]
pub struct Authorized<P: Policy> {
    pub caller: Arc<Caller>,
    _policy: PhantomData<P>,
}

impl<P: Policy> std::ops::Deref for Authorized<P> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<P: Policy> FromRequest for Authorized<P> {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(caller) = req.extensions().get::<Arc<Caller>>().cloned() else {
            // A route outside the authenticating scope asked for a caller: a wiring mistake, fail closed.
            return ready(Err(challenge(AuthError::Missing)));
        };
        if let Some(permission) = P::PERMISSION
            && !caller.permissions.contains(permission)
        {
            return ready(Err(insufficient(permission)));
        }
        ready(Ok(Authorized { caller, _policy: PhantomData }))
    }
}

/// 403 naming the missing permission, with the RFC 6750 `insufficient_scope` challenge.
pub fn insufficient(permission: Permission) -> AppError {
    AppError::new(ErrorCode::InsufficientScope)
        .with_detail(format!("this operation requires the {permission} permission (app role or delegated scope)"))
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"requires {permission}\", scope=\"{permission}\""
            ))
            .expect("permission names are header-safe"),
        )
}

/// 401 with the RFC 6750 challenge for a missing or invalid token; 503 when the identity provider is away.
pub fn challenge(err: AuthError) -> AppError {
    match err {
        AuthError::Missing => AppError::new(ErrorCode::Unauthenticated)
            .with_detail("send an OAuth 2.0 bearer token in the Authorization header")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"meterline\"")),
        AuthError::Invalid(reason) => {
            let safe: String = reason.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            AppError::new(ErrorCode::InvalidToken).with_detail(reason).with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{safe}\""
                ))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"meterline\", error=\"invalid_token\"")),
            )
        }
        AuthError::ProviderUnavailable(cause) if crate::resilience::Refusal::find(&cause).is_some() => {
            crate::resilience::Refusal::find(&cause).expect("matched above").into()
        }
        AuthError::ProviderUnavailable(cause) => AppError::new(ErrorCode::IdentityProviderUnavailable)
            .with_detail("the identity provider's signing keys cannot be loaded; retry later")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
            .with_source(cause),
    }
}

fn bearer_token(req: &ServiceRequest) -> Result<&str, AuthError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = values.next().ok_or(AuthError::Missing)?;
    // Two credentials are one too many (RFC 6750 §3.1, invalid_request): taking either would be a guess.
    if values.next().is_some() {
        return Err(AuthError::Invalid("the request carries more than one Authorization header".into()));
    }
    let value = value.to_str().map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() { Err(AuthError::Missing) } else { Ok(token) }
}

/// Which of the registrations of a token's (directory, application) applies to it.
///
/// Registrations are keyed by the directory their tokens carry, so `registrations` are already those of the
/// token's own `tid`: a registration for another directory never narrows or redirects a caller. When the
/// directory is some tenant's own directory (`directory_tenant`), only that tenant's registrations count, so a
/// registration another tenant obtained for it earlier cannot take the directory's tokens away from its owner.
/// Pending and rejected registrations apply to nothing, and neither does a revoked one that never applied (a
/// registration for a directory no tenant owns applies only once a platform administrator approved it, so one
/// withdrawn while pending cannot refuse the directory's tokens); an active one wins over a revoked one, the
/// newest first.
pub fn applicable_registration(registrations: &[ApiClient], directory_tenant: Option<Uuid>) -> Option<&ApiClient> {
    registrations
        .iter()
        .filter(|c| match c.status {
            ClientStatus::Active => true,
            ClientStatus::Revoked => directory_tenant.is_some() || c.decided_at.is_some(),
            ClientStatus::Pending | ClientStatus::Rejected => false,
        })
        .filter(|c| directory_tenant.is_none_or(|t| c.tenant_id == t))
        .max_by_key(|c| (c.status == ClientStatus::Active, c.created_at, c.id))
}

/// The permissions a registration leaves a token: at most its roles, and `Platform.Admin` if the token holds it
/// (no tenant's registration can demote the platform administrator; it cannot grant the role either).
pub fn narrowed(token: PermissionSet, registration: &ApiClient) -> PermissionSet {
    let granted = PermissionSet::from_names(registration.roles.iter().map(String::as_str));
    let permissions = token.intersect(granted);
    if token.contains(Permission::PlatformAdmin) { permissions.with(Permission::PlatformAdmin) } else { permissions }
}

/// Maps a principal to its tenant and effective permissions.
///
/// The token's directory (`tid`) maps to its tenant. A registration of the token's (directory, application)
/// ([`applicable_registration`]) caps the permissions at its grant and, for a partner application approved for
/// another directory, decides the tenant. Platform administrators may belong to no tenant. Unknown, suspended
/// and closed tenants, and revoked clients, are refused with 403.
pub async fn resolve_caller(state: &AppState, principal: Arc<Principal>) -> Result<Caller, CallerRefused> {
    let mut permissions = principal.permissions;
    let mut api_client_id = None;
    let mut client_limits = ClientLimits::default();
    let directory = principal.directory_id.parse::<Uuid>().ok();
    let directory_tenant = match directory {
        Some(directory) => state.lookups.tenant_by_entra_id(directory).await?,
        None => None,
    };
    let registrations = match (directory, &principal.app_id) {
        // A platform directory's applications are the platform's: no tenant's registration (one made before the
        // directory was configured as a platform directory included) maps or caps them.
        (Some(directory), _) if state.auth.is_platform_directory(directory) => None,
        (Some(directory), Some(app_id)) => Some(state.lookups.api_clients_for_app(directory, app_id).await?),
        _ => None,
    };
    let registration =
        registrations.as_deref().and_then(|r| applicable_registration(r, directory_tenant.as_ref().map(|t| t.id)));
    let tenant = match registration {
        // No tenant's registration demotes the platform administrator (`narrowed`), nor locks it out: a revoked
        // one leaves its token as if it had never been registered.
        Some(client) if client.status == ClientStatus::Revoked && permissions.contains(Permission::PlatformAdmin) => {
            directory_tenant
        }
        Some(client) if client.status == ClientStatus::Revoked => {
            return Err(CallerRefused {
                error: AppError::new(ErrorCode::ClientRevoked)
                    .with_detail("this application's registration with its tenant was revoked"),
                tenant: Some(RefusedTenant(client.tenant_id)),
            });
        }
        Some(client) => {
            permissions = narrowed(permissions, client);
            api_client_id = Some(client.id);
            client_limits = client.limits;
            match directory_tenant {
                Some(own) if own.id == client.tenant_id => Some(own),
                _ => state.lookups.tenant(client.tenant_id).await?,
            }
        }
        None => directory_tenant,
    };
    match &tenant {
        None if permissions.contains(Permission::PlatformAdmin) => {}
        None => {
            return Err(AppError::new(ErrorCode::UnknownTenant)
                .with_detail("the token's directory (tid) and application are not registered with any Meterline tenant")
                .into());
        }
        Some(t) if t.status != TenantStatus::Active => {
            return Err(CallerRefused {
                error: AppError::new(ErrorCode::TenantSuspended)
                    .with_detail(format!("the tenant is {}", t.status.as_str())),
                tenant: Some(RefusedTenant(t.id)),
            });
        }
        Some(_) => {}
    }
    Ok(Caller { principal, tenant, api_client_id, client_limits, permissions })
}

/// Why [`resolve_caller`] refused a principal, and the tenant it was identified as when there is one.
#[derive(Debug)]
pub struct CallerRefused {
    pub error: AppError,
    pub tenant: Option<RefusedTenant>,
}

impl<E: Into<AppError>> From<E> for CallerRefused {
    fn from(error: E) -> Self {
        CallerRefused { error: error.into(), tenant: None }
    }
}

/// Request extension: the tenant a refused caller was identified as (a suspended or closed tenant's token, a
/// revoked client's), so the call's usage record and audit event are the tenant's, as every call it makes is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedTenant(pub Uuid);

/// The middleware on `/api/v1`: authenticate, resolve the caller, store it in the request extensions.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().expect("AppState is registered").clone();
    let caller = async {
        let token = bearer_token(&req).map_err(challenge)?;
        let principal = state.auth.authenticate(token).await.map_err(challenge)?;
        // Kept for the audit trail even if the tenant refuses the caller below (a 403 names its actor).
        req.extensions_mut().insert(principal.clone());
        resolve_caller(&state, principal).await.map_err(|refused| {
            if let Some(tenant) = refused.tenant {
                req.extensions_mut().insert(tenant);
            }
            refused.error
        })
    }
    .await;
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(Arc::new(caller));
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(err) => {
            let (request, _) = req.into_parts();
            Ok(ServiceResponse::from_err(err, request).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn registration(n: u128, tenant: u128, status: ClientStatus, minute: u32, roles: &[&str]) -> ApiClient {
        ApiClient {
            id: Uuid::from_u128(n),
            tenant_id: Uuid::from_u128(tenant),
            directory_id: Some(Uuid::from_u128(0xD)),
            app_id: "app".into(),
            display_name: "App".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            status,
            created_at: Utc.with_ymd_and_hms(2026, 12, 1, 0, minute, 0).unwrap(),
            revoked_at: None,
            decided_by: None,
            decided_at: None,
            version: 1,
            limits: ClientLimits::default(),
        }
    }

    /// `client` as a platform administrator decided it.
    fn decided(mut client: ApiClient) -> ApiClient {
        client.decided_by = Some("platform".into());
        client.decided_at = Some(client.created_at);
        client
    }

    #[test]
    fn only_active_or_revoked_registrations_apply_and_the_directorys_own_tenant_wins() {
        use ClientStatus::*;
        let pending = registration(1, 7, Pending, 0, &[]);
        let rejected = registration(2, 7, Rejected, 1, &[]);
        assert_eq!(applicable_registration(&[pending.clone(), rejected.clone()], None), None);
        // Revoked after a platform administrator approved it (the directory is no tenant's).
        let revoked = decided(registration(3, 7, Revoked, 2, &[]));
        let active = registration(4, 7, Active, 1, &[]);
        let all = [pending, rejected, revoked.clone(), active.clone()];
        assert_eq!(applicable_registration(&all, None), Some(&active), "active wins over a newer revoked one");
        assert_eq!(applicable_registration(&all[..3], None), Some(&revoked), "a revoked one refuses the caller");
        // Withdrawn while pending (revoked, never decided): it never applied, so it refuses nothing.
        let withdrawn = registration(6, 7, Revoked, 3, &[]);
        assert_eq!(applicable_registration(std::slice::from_ref(&withdrawn), None), None);
        assert_eq!(
            applicable_registration(std::slice::from_ref(&withdrawn), Some(Uuid::from_u128(7))),
            Some(&withdrawn),
            "the directory's own tenant's registrations were active from the start"
        );
        // Tenant 8 owns the directory: tenant 7's (foreign) registrations of it are inert.
        assert_eq!(applicable_registration(&all, Some(Uuid::from_u128(8))), None);
        let owners = registration(5, 8, Active, 0, &[]);
        let with_owner = [active, owners.clone()];
        assert_eq!(applicable_registration(&with_owner, Some(Uuid::from_u128(8))), Some(&owners));
    }

    #[test]
    fn a_registration_caps_tenant_roles_and_never_touches_platform_admin() {
        let client = registration(1, 7, ClientStatus::Active, 0, &["Documents.Read", "Usage.Read"]);
        let token = PermissionSet::from_names(["Documents.Read", "Documents.Write", "Platform.Admin"]);
        let left = narrowed(token, &client);
        assert!(left.contains(Permission::DocumentsRead));
        assert!(!left.contains(Permission::DocumentsWrite), "capped at the grant");
        assert!(!left.contains(Permission::UsageRead), "the grant adds nothing the token lacks");
        assert!(left.contains(Permission::PlatformAdmin), "no tenant can demote the platform administrator");
        let plain = narrowed(PermissionSet::from_names(["Documents.Read"]), &client);
        assert!(!plain.contains(Permission::PlatformAdmin), "nor can a registration grant it");
    }
}
