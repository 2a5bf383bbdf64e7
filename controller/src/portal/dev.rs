//! `/dev/act-as`, dev mode only: on one machine a single dev user cannot show the review path
//! (the requester and the callee's team are different people), so the person at the keyboard
//! can act as any team member (a `SameSite=Strict` cookie; an empty choice goes back to the dev
//! user). On loopback anyone can already do what the controller can, so this adds no
//! privilege; behind a trusted proxy the route does not exist. Acting as someone is being them:
//! the requester still cannot review their own request, they must act as another member.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, header};
use maud::{Markup, html};

use super::User;
use super::auth::ACT_AS_COOKIE;
use super::extract::{CsrfToken, Form};
use super::page::page;
use super::server::Shared;

/// The longest name accepted.
const MAX_NAME: usize = 256;

/// `GET /dev/act-as`: the teams' members to act as.
pub async fn chooser(State(s): State<Shared>, user: User, CsrfToken(token): CsrfToken) -> Markup {
    let policy = s.portal.plane.policy();
    let dev_user = s.auth.dev_user.as_deref().unwrap_or("the dev user");
    let body = html! {
        h1 { "Act as someone else" }
        p.muted {
            "Dev mode: the portal runs on this machine for you alone, so you can play every part \
             of the story — ask for access as yourself, then approve it as a member of the \
             callee's team. You are " strong { (user.name) } "."
        }
        @for (team, spec) in &policy.set.teams {
            div.card {
                h2 { "Team " (team.name) }
                @for member in &spec.doc.spec.members {
                    form method="post" action="/dev/act-as" style="display:inline" {
                        input type="hidden" name="csrf" value=(token);
                        input type="hidden" name="user" value=(member.name);
                        button type="submit" class="secondary" { "Act as " (member.name) }
                    }
                    " "
                }
            }
        }
        form method="post" action="/dev/act-as" {
            input type="hidden" name="csrf" value=(token);
            input type="hidden" name="user" value="";
            button type="submit" { "Back to " (dev_user) }
        }
    };
    page("Act as", Some(&user), body)
}

/// The chooser's form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ActAs {
    /// A member's name; empty for the dev user.
    pub user: String,
}

/// `POST /dev/act-as` (CSRF-checked like every form): sets or clears the cookie.
pub async fn act_as(Form(form): Form<ActAs>) -> Response {
    let name = form.user.trim();
    let cookie = if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        format!("{ACT_AS_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
    } else {
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        format!("{ACT_AS_COOKIE}={encoded}; Path=/; HttpOnly; SameSite=Strict")
    };
    let mut response = Redirect::to("/access").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
