//! The authenticator chain of a listener over a CONNECT without an Authentication Method, as
//! a pure function: which authenticator applies, given the listener's chain and what the
//! CONNECT brought, and what follows when none does.
//!
//! Each link answers "not mine" from the CONNECT's facts alone; the first link that is not
//! "not mine" decides, either at once (a refusal: it needs a password the CONNECT lacks) or by
//! its check, whose verdict (allow, or deny; a backend error is a deny) is final. So the whole
//! chain comes down to one [`Decision`], made without I/O, that the service then carries out.
//! SCRAM only applies through an Authentication Method (the driver's exchange) and is never
//! "mine" here.

use bulwark_auth::jwt;
use bulwark_proto::ReasonCode;

use super::{Authenticator, ListenerAuth, Refusal};

/// What a CONNECT brought, as the chain sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectFacts<'a> {
    /// The CONNECT's username.
    pub(crate) username: Option<&'a str>,
    /// The CONNECT's password.
    pub(crate) password: Option<&'a [u8]>,
    /// The identity of a verified client certificate, if the listener maps one.
    pub(crate) certificate: Option<&'a str>,
    /// Whether JWT authentication is configured (`[auth.jwt]`).
    pub(crate) jwt_configured: bool,
}

/// The check an authenticator runs; its verdict is the chain's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check<'a> {
    /// The certificate's identity, unless the store has that user disabled.
    Certificate {
        /// The certificate's identity.
        name: &'a str,
    },
    /// A username (the CONNECT's, or the certificate's) and password against the store.
    Password {
        name: &'a str,
        password: &'a [u8],
        /// `password` or `certificate+password`.
        method: &'static str,
    },
    /// A JWT in the password field.
    Jwt {
        token: &'a [u8],
        /// The CONNECT's username, which must match the token's if given.
        username: Option<&'a str>,
    },
}

/// What the chain decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision<'a> {
    /// Run this check: its verdict is the answer.
    Run(Check<'a>),
    /// Refused without a check.
    Refuse(Refusal),
    /// An anonymous client on a listener that lets them in.
    Anonymous,
}

/// The decision of `listener`'s chain over a CONNECT with these facts.
pub(crate) fn decide<'a>(listener: &ListenerAuth, facts: &ConnectFacts<'a>) -> Decision<'a> {
    let ConnectFacts {
        username,
        password,
        certificate,
        jwt_configured,
    } = *facts;
    for authenticator in &listener.chain {
        let decision = match authenticator {
            Authenticator::Certificate => certificate.map(|name| Check::Certificate { name }),
            Authenticator::CertificateAndPassword => match (certificate, password) {
                (Some(name), Some(password)) => Some(Check::Password {
                    name,
                    password,
                    method: "certificate+password",
                }),
                (Some(_), None) => {
                    return Decision::Refuse(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "certificate+password: no password given",
                    ));
                }
                (None, _) => None,
            },
            Authenticator::Jwt => match password {
                Some(token) if jwt_configured && jwt::looks_like_jwt(token) => {
                    Some(Check::Jwt { token, username })
                }
                _ => None,
            },
            // Only through an Authentication Method (see the driver).
            Authenticator::Scram => None,
            Authenticator::Password => match (username, password) {
                (Some(name), Some(password)) => Some(Check::Password {
                    name,
                    password,
                    method: "password",
                }),
                (Some(_), None) => {
                    return Decision::Refuse(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "no password given",
                    ));
                }
                (None, _) => None,
            },
        };
        if let Some(check) = decision {
            return Decision::Run(check);
        }
    }
    let no_credentials = username.is_none() && password.is_none() && certificate.is_none();
    if no_credentials && listener.allow_anonymous {
        return Decision::Anonymous;
    }
    Decision::Refuse(if no_credentials {
        Refusal::failure(
            ReasonCode::NotAuthorized,
            "no credentials (anonymous access is off)",
        )
    } else {
        Refusal::failure(
            ReasonCode::BadUserNameOrPassword,
            "no authenticator of this listener accepted the credentials",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A token shaped like a JWT (three base64url parts).
    const TOKEN: &[u8] = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    fn listener(chain: &[Authenticator], allow_anonymous: bool) -> ListenerAuth {
        ListenerAuth {
            name: Arc::from("test"),
            chain: chain.to_vec(),
            allow_anonymous,
        }
    }

    fn facts<'a>(
        username: Option<&'a str>,
        password: Option<&'a [u8]>,
        certificate: Option<&'a str>,
    ) -> ConnectFacts<'a> {
        ConnectFacts {
            username,
            password,
            certificate,
            jwt_configured: true,
        }
    }

    fn refusal(decision: Decision<'_>) -> (ReasonCode, String) {
        match decision {
            Decision::Refuse(refusal) => (refusal.code, refusal.reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_first_link_that_applies_decides_in_the_listeners_order() {
        use Authenticator::{Certificate, Jwt, Password};
        let with_all = facts(Some("alice"), Some(TOKEN), Some("sensor-1"));
        assert_eq!(
            decide(&listener(&[Certificate, Jwt, Password], false), &with_all),
            Decision::Run(Check::Certificate { name: "sensor-1" })
        );
        assert_eq!(
            decide(&listener(&[Jwt, Certificate, Password], false), &with_all),
            Decision::Run(Check::Jwt {
                token: TOKEN,
                username: Some("alice")
            })
        );
        assert_eq!(
            decide(&listener(&[Password, Jwt, Certificate], false), &with_all),
            Decision::Run(Check::Password {
                name: "alice",
                password: TOKEN,
                method: "password"
            })
        );
    }

    #[test]
    fn the_default_chain_tries_certificates_before_tokens_before_passwords() {
        let default = listener(&Authenticator::ALL, false);
        let password = facts(Some("alice"), Some(b"secret"), None);
        assert_eq!(
            decide(&default, &password),
            Decision::Run(Check::Password {
                name: "alice",
                password: b"secret",
                method: "password"
            })
        );
        let token = facts(None, Some(TOKEN), None);
        assert_eq!(
            decide(&default, &token),
            Decision::Run(Check::Jwt {
                token: TOKEN,
                username: None
            })
        );
        let certificate = facts(Some("ignored"), None, Some("sensor-1"));
        assert_eq!(
            decide(&default, &certificate),
            Decision::Run(Check::Certificate { name: "sensor-1" })
        );
    }

    #[test]
    fn links_that_are_not_mine_pass_to_the_next() {
        use Authenticator::{CertificateAndPassword, Jwt, Password, Scram};
        let chain = listener(&[Scram, CertificateAndPassword, Jwt, Password], false);
        // No certificate: certificate+password is not mine; a plain password is not a JWT.
        let plain = facts(Some("alice"), Some(b"secret"), None);
        assert_eq!(
            decide(&chain, &plain),
            Decision::Run(Check::Password {
                name: "alice",
                password: b"secret",
                method: "password"
            })
        );
        // Without [auth.jwt], a token is a password like any other.
        let unconfigured = ConnectFacts {
            jwt_configured: false,
            ..facts(Some("alice"), Some(TOKEN), None)
        };
        assert!(matches!(
            decide(&chain, &unconfigured),
            Decision::Run(Check::Password { .. })
        ));
    }

    #[test]
    fn a_certificate_with_a_password_names_the_user_to_check() {
        use Authenticator::{CertificateAndPassword, Password};
        let chain = listener(&[CertificateAndPassword, Password], false);
        let both = facts(Some("someone-else"), Some(b"secret"), Some("sensor-1"));
        assert_eq!(
            decide(&chain, &both),
            Decision::Run(Check::Password {
                name: "sensor-1",
                password: b"secret",
                method: "certificate+password"
            })
        );
        let no_password = facts(Some("sensor-1"), None, Some("sensor-1"));
        assert_eq!(
            refusal(decide(&chain, &no_password)),
            (
                ReasonCode::BadUserNameOrPassword,
                "certificate+password: no password given".into()
            )
        );
    }

    #[test]
    fn a_username_without_a_password_is_refused_by_the_password_link() {
        let chain = listener(&[Authenticator::Password], true);
        let (code, reason) = refusal(decide(&chain, &facts(Some("alice"), None, None)));
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        assert_eq!(reason, "no password given");
    }

    #[test]
    fn nothing_at_all_is_anonymous_only_where_the_listener_allows_it() {
        let chain = listener(&[Authenticator::Password], true);
        let nothing = facts(None, None, None);
        assert_eq!(decide(&chain, &nothing), Decision::Anonymous);
        let closed = listener(&[Authenticator::Password], false);
        assert_eq!(
            refusal(decide(&closed, &nothing)).0,
            ReasonCode::NotAuthorized
        );
        // Credentials no link takes are refused, even on an anonymous listener.
        let certificate_only = facts(None, None, Some("sensor-1"));
        assert_eq!(
            refusal(decide(&chain, &certificate_only)).0,
            ReasonCode::BadUserNameOrPassword
        );
        let empty_chain = listener(&[], true);
        assert_eq!(
            refusal(decide(&empty_chain, &facts(None, Some(b"pw"), None))).0,
            ReasonCode::BadUserNameOrPassword
        );
    }
}
