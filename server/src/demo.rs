//! The demo, served by the node itself with `backchannel serve --demo` (off by default):
//! a customer widget (also embeddable with one script tag), an agent console and a
//! supervisor view, plain HTML and ES modules built on `@backchannel/client`, plus a
//! token endpoint for a fixed cast of demo users. Without `--demo` none of these routes
//! exist ([`crate::api::router`] merges [`router`] only when `AppState::demo` is set),
//! so they answer 404 like any unknown path.
//!
//! The pages and the client bundle are compiled into the binary (`include_str!` of
//! `server/demo/`): the single binary serves them, and `cargo build` needs no Node.
//! `server/demo/backchannel-client.js` is generated from `client-js/src` by
//! `npm run bundle:demo` in `client-js/` and committed.
//!
//! On start, [`Demo::start`] seeds what the pages use through the service, as an admin,
//! idempotently: the team `tier2`, tags, custom fields, the demo staff in the directory
//! (so a mention or a transfer reaches them before they first sign in), and, in a store
//! without any conversation, one sample conversation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backchannel_protocol::http::{FieldType, OpenConversation, PutField, PutTag, PutTeam};
use backchannel_protocol::{FieldTarget, InboxId, Role, TeamId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{ApiError, Path};
use crate::app::{AppState, ServerError};
use crate::auth::{self, Claims, Identity, InboxScope, Keys};
use crate::error::ServiceError;
use crate::service::{ConversationView, ListQuery, Service};

/// How long a demo token is valid; the pages fetch a new one before it runs out.
pub const TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// The inbox every demo conversation is in (a new data directory has it).
const INBOX: &str = "support";

/// One of the demo's cast. Nobody else gets a token from `POST /demo/token`.
#[derive(Clone, Copy, Debug)]
pub struct DemoUser {
    pub id: &'static str,
    pub role: Role,
    pub name: &'static str,
    /// What the pages show under the name.
    pub title: &'static str,
    pub teams: &'static [&'static str],
    /// `None`: the role's default (supervisors: every inbox; customers: none).
    pub inboxes: Option<&'static [&'static str]>,
}

/// The cast: a customer, two agents of team `tier2`, a supervisor.
pub const USERS: [DemoUser; 4] = [
    DemoUser {
        id: "carol",
        role: Role::Customer,
        name: "Carol",
        title: "Customer",
        teams: &[],
        inboxes: None,
    },
    DemoUser {
        id: "alice",
        role: Role::Agent,
        name: "Alice",
        title: "Agent, Tier 2",
        teams: &["tier2"],
        inboxes: Some(&[INBOX]),
    },
    DemoUser {
        id: "bob",
        role: Role::Agent,
        name: "Bob",
        title: "Agent, Tier 2",
        teams: &["tier2"],
        inboxes: Some(&[INBOX]),
    },
    DemoUser {
        id: "sam",
        role: Role::Supervisor,
        name: "Sam",
        title: "Supervisor",
        teams: &[],
        inboxes: None,
    },
];

/// The demo user named `id`, if there is one.
pub fn user(id: &str) -> Option<&'static DemoUser> {
    USERS.iter().find(|u| u.id == id)
}

/// The demo's state: the keys its tokens are signed with (the node's own).
#[derive(Clone, Debug)]
pub struct Demo {
    keys: Keys,
}

impl Demo {
    /// Seeds the definitions and directory entries the demo needs, then returns the demo.
    pub async fn start(service: &Service, keys: Keys) -> Result<Demo, ServerError> {
        let demo = Demo { keys };
        demo.seed(service).await.map_err(ServerError::Demo)?;
        Ok(demo)
    }

    /// A token for a demo user, and its `exp`.
    pub fn mint(&self, user: &DemoUser) -> Result<(String, u64), ServiceError> {
        let exp = auth::expiry_after(TOKEN_TTL);
        let claims = Claims {
            sub: user.id.to_owned(),
            role: user.role,
            name: Some(user.name.to_owned()),
            handle: None,
            teams: (!user.teams.is_empty())
                .then(|| user.teams.iter().map(|t| (*t).to_owned()).collect()),
            inboxes: user
                .inboxes
                .map(|list| list.iter().map(|i| (*i).to_owned()).collect()),
            exp,
        };
        let token = self.keys.mint(&claims).map_err(|e| {
            tracing::error!("demo: cannot mint a token: {e}");
            ServiceError::Internal
        })?;
        Ok((token, exp))
    }

    async fn seed(&self, service: &Service) -> Result<(), ServiceError> {
        let admin = Identity {
            user_id: UserId("demo-setup".into()),
            role: Role::Admin,
            name: Some("Demo set-up".into()),
            handle: "demo-setup".into(),
            teams: Vec::new(),
            inboxes: InboxScope::All,
            // In-process identities for the seed: no token, nothing to expire.
            expires_at: u64::MAX,
        };
        service
            .put_team(
                &admin,
                TeamId("tier2".into()),
                PutTeam {
                    name: Some("Tier 2".into()),
                },
            )
            .await?;
        let tags = [
            ("vip", "#b45309", "A customer to look after"),
            ("billing", "#1d4ed8", "Invoices, charges, refunds"),
            ("bug", "#b91c1c", "Something is broken"),
            ("refund", "#047857", "A refund was asked for"),
        ];
        for (name, color, description) in tags {
            let body = PutTag {
                color: Some(color.into()),
                description: Some(description.into()),
            };
            service.put_tag(&admin, name.into(), body).await?;
        }
        let fields = [
            (
                "plan",
                FieldType::List,
                FieldTarget::Conversation,
                "Plan",
                &["free", "pro", "enterprise"][..],
            ),
            (
                "order_id",
                FieldType::Text,
                FieldTarget::Conversation,
                "Order id",
                &[][..],
            ),
            (
                "account_tier",
                FieldType::List,
                FieldTarget::Contact,
                "Account tier",
                &["standard", "gold", "platinum"][..],
            ),
        ];
        for (key, field_type, applies_to, label, options) in fields {
            let body = PutField {
                field_type,
                applies_to,
                label: Some(label.into()),
                required: false,
                options: options.iter().map(|o| (*o).to_owned()).collect(),
            };
            service.put_field(&admin, key.into(), body).await?;
        }
        // Staff are known once they present a token: present one for each now, so that
        // `@bob` and a transfer to Bob work before Bob first opens his console.
        for staff in USERS.iter().filter(|u| u.role.is_staff()) {
            let (token, _) = self.mint(staff)?;
            service.authenticate(&token).await?;
        }
        let any = ListQuery {
            limit: Some(1),
            ..ListQuery::default()
        };
        if service.list_conversations(&admin, any).await?.is_empty() {
            self.seed_conversation(service, &admin).await?;
        }
        Ok(())
    }

    /// A first conversation from a customer outside the cast, so the console has one.
    async fn seed_conversation(
        &self,
        service: &Service,
        admin: &Identity,
    ) -> Result<(), ServiceError> {
        let dave = Identity {
            user_id: UserId("dave".into()),
            role: Role::Customer,
            name: Some("Dave".into()),
            handle: "dave".into(),
            teams: Vec::new(),
            inboxes: InboxScope::Only(Default::default()),
            // In-process identities for the seed: no token, nothing to expire.
            expires_at: u64::MAX,
        };
        let open = OpenConversation {
            inbox_id: InboxId(INBOX.into()),
            subject: Some("Charged twice for March".into()),
            contact_id: None,
            fields: None,
        };
        let id = match service.open_conversation(&dave, open).await? {
            ConversationView::Customer(view) => view.id,
            ConversationView::Staff(view) => view.id,
        };
        let body = "Hi! My card was charged twice for the March invoice. Can you refund one?";
        service
            .send_message(&dave, id, "seed-1".into(), body.into(), None)
            .await?;
        service
            .tag(admin, id, vec!["billing".into()], Vec::new())
            .await?;
        let mut values = BTreeMap::new();
        values.insert("account_tier".to_owned(), json!("gold"));
        service
            .set_fields(admin, FieldTarget::Contact, "dave".into(), values)
            .await?;
        Ok(())
    }
}

/// The demo's routes; merged into the API's router only with `--demo`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| page(INDEX_HTML, FRAMES_NONE)))
        .route("/demo/widget", get(|| page(WIDGET_HTML, FRAMES_ANY)))
        .route("/demo/console", get(|| page(CONSOLE_HTML, FRAMES_NONE)))
        .route(
            "/demo/supervisor",
            get(|| page(SUPERVISOR_HTML, FRAMES_NONE)),
        )
        .route("/demo/widget.js", get(embed_script))
        .route("/demo/assets/{file}", get(asset))
        .route("/demo/users", get(users))
        .route("/demo/token", post(token))
}

const INDEX_HTML: &str = include_str!("../demo/index.html");
const WIDGET_HTML: &str = include_str!("../demo/widget.html");
const CONSOLE_HTML: &str = include_str!("../demo/console.html");
const SUPERVISOR_HTML: &str = include_str!("../demo/supervisor.html");
const EMBED_JS: &str = include_str!("../demo/embed.js");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The files under `/demo/assets/`.
const ASSETS: [(&str, &str, &str); 7] = [
    ("demo.css", CSS, include_str!("../demo/demo.css")),
    ("index.js", JS, include_str!("../demo/index.js")),
    ("common.js", JS, include_str!("../demo/common.js")),
    ("widget.js", JS, include_str!("../demo/widget.js")),
    ("console.js", JS, include_str!("../demo/console.js")),
    ("supervisor.js", JS, include_str!("../demo/supervisor.js")),
    (
        "backchannel-client.js",
        JS,
        include_str!("../demo/backchannel-client.js"),
    ),
];

/// Only the widget may be framed by other sites (the one-tag embed puts it in an iframe).
const FRAMES_ANY: &str = "*";
const FRAMES_NONE: &str = "'self'";

/// Scripts and styles from this node only (no inline code), requests and sockets to it
/// only: `'self'` covers the node's own `ws:`/`wss:` (CSP 3), and `ws: wss:` would allow
/// a socket to any host, a way out for data if a script ever ran.
fn policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors {frame_ancestors}"
    )
}

async fn page(html: &'static str, frame_ancestors: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&policy(frame_ancestors)) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

fn script(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `/demo/widget.js`: loaded by other sites' pages too, so any origin may fetch it.
async fn embed_script() -> Response {
    let mut response = script(JS, EMBED_JS);
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => script(content_type, body),
        None => ApiError(ServiceError::NotFound("demo asset".into())).into_response(),
    }
}

fn describe(user: &DemoUser) -> Value {
    json!({
        "id": user.id,
        "role": user.role,
        "name": user.name,
        "title": user.title,
        "handle": user.id,
        "teams": user.teams,
    })
}

/// `GET /demo/users`: the cast and its team, for the pages' pickers and for @mention
/// completion (agents may not call `GET /v1/agents`).
async fn users() -> Json<Value> {
    let members: Vec<&str> = USERS
        .iter()
        .filter(|u| u.teams.contains(&"tier2"))
        .map(|u| u.id)
        .collect();
    Json(json!({
        "users": USERS.iter().map(describe).collect::<Vec<_>>(),
        "teams": [{"id": "tier2", "name": "Tier 2", "members": members}],
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
}

/// `POST /demo/token {"user": "alice"}`: a short-lived token for a demo user; anyone
/// else is refused with 403 `forbidden`.
async fn token(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError(ServiceError::bad_request(e.body_text())))?;
    let demo = state
        .demo
        .as_ref()
        .ok_or_else(|| ApiError(ServiceError::NotFound("route".into())))?;
    let user = user(&body.user).ok_or_else(|| {
        let cast: Vec<&str> = USERS.iter().map(|u| u.id).collect();
        ApiError(ServiceError::forbidden(format!(
            "not a demo user; tokens are minted for {} only",
            cast.join(", ")
        )))
    })?;
    let (token, exp) = demo.mint(user)?;
    let body = json!({
        "token": token,
        "expires_at": exp,
        "user": describe(user),
    });
    // A token: no cache keeps it.
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cast_is_fixed_and_each_token_carries_its_user() {
        assert!(user("mallory").is_none());
        assert!(user("").is_none());
        let keys = Keys::new(b"demo-test-secret");
        let demo = Demo { keys: keys.clone() };
        for cast in USERS {
            let (token, exp) = demo.mint(&cast).expect("mint");
            let identity = keys.verify(&token).expect("verify");
            assert_eq!(identity.user_id.as_str(), cast.id);
            assert_eq!(identity.role, cast.role);
            assert!(exp > auth::expiry_after(Duration::ZERO));
        }
        let bob = keys.verify(&demo.mint(&USERS[2]).unwrap().0).unwrap();
        assert_eq!(bob.teams, vec!["tier2".to_owned()]);
        assert!(bob.inboxes.allows(&InboxId(INBOX.into())));
    }

    #[test]
    fn every_page_and_asset_is_embedded() {
        for html in [INDEX_HTML, WIDGET_HTML, CONSOLE_HTML, SUPERVISOR_HTML] {
            assert!(html.starts_with("<!doctype html>"), "{}", &html[..40]);
        }
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name} is empty");
        }
        let bundle = ASSETS
            .iter()
            .find(|(name, _, _)| *name == "backchannel-client.js");
        assert!(bundle.is_some_and(|(_, _, body)| body.contains("HttpApi")));
    }
}
