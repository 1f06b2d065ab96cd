//! Talking to a service's admin page (`/admin`) as a browser would, without one: a client that
//! shows each answer's cookies, signing in, and the CSRF token of the page's forms.

use std::time::Duration;

/// An HTTP client that does not follow redirects, so a test sees each answer's cookies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `POST /admin/login` with `token` to the service at `base` (`http://host:port`): the answer.
pub async fn login(base: &str, token: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/admin/login"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("POST /admin/login")
}

/// The `Cookie` header of the session a login answer set.
pub fn session_cookie(login: &reqwest::Response) -> String {
    let set = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("the login sets a cookie");
    set.split(';').next().expect("name=value").to_owned()
}

/// The CSRF token of the forms in an admin page's HTML.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("the page has a form with a CSRF token")
        + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().expect("the value").to_owned()
}
