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
use crate::store::{Tenant, TenantStatus};

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
        AuthError::ProviderUnavailable(cause) => AppError::new(ErrorCode::IdentityProviderUnavailable)
            .with_detail("the identity provider's signing keys cannot be loaded; retry later")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
            .with_source(cause),
    }
}

fn bearer_token(req: &ServiceRequest) -> Result<&str, AuthError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() { Err(AuthError::Missing) } else { Ok(token) }
}

/// Maps a principal to its tenant and effective permissions.
///
/// A registered API client (`azp`/`appid`) decides the tenant and caps the permissions at its grant;
/// otherwise the token's directory (`tid`) must map to a tenant. Platform administrators may belong to
/// no tenant. Unknown, suspended and closed tenants, and revoked clients, are refused with 403.
pub async fn resolve_caller(state: &AppState, principal: Arc<Principal>) -> Result<Caller, AppError> {
    let mut permissions = principal.permissions;
    let mut api_client_id = None;
    let registered = match &principal.app_id {
        Some(app_id) => state.lookups.api_client_by_app_id(app_id).await?,
        None => None,
    };
    let tenant = match registered {
        Some(client) if !client.active => {
            return Err(AppError::new(ErrorCode::ClientRevoked)
                .with_detail("this application's registration with its tenant was revoked"));
        }
        Some(client) => {
            permissions = permissions.intersect(PermissionSet::from_names(client.roles.iter().map(String::as_str)));
            api_client_id = Some(client.id);
            state.lookups.tenant(client.tenant_id).await?
        }
        None => match principal.directory_id.parse::<Uuid>() {
            Ok(directory) => state.lookups.tenant_by_entra_id(directory).await?,
            Err(_) => None,
        },
    };
    match &tenant {
        None if permissions.contains(Permission::PlatformAdmin) => {}
        None => {
            return Err(AppError::new(ErrorCode::UnknownTenant).with_detail(
                "the token's directory (tid) and application are not registered with any Meterline tenant",
            ));
        }
        Some(t) if t.status != TenantStatus::Active => {
            return Err(
                AppError::new(ErrorCode::TenantSuspended).with_detail(format!("the tenant is {}", t.status.as_str()))
            );
        }
        Some(_) => {}
    }
    Ok(Caller { principal, tenant, api_client_id, permissions })
}

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
        resolve_caller(&state, principal).await
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
