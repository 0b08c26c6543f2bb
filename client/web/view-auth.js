/**
 * The log-in and create-account forms. Input is checked here first, so the
 * common mistakes get their explanation before a round trip.
 */

import { byId } from "./dom.js";
import { USERNAME_PATTERN, plainWords } from "./protocol.js";

/** Wires the two forms; `run(promise)` reports failures in the banner. */
export function mountAuth(store, client, run) {
  const loginForm = byId("login-form");
  loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const username = byId("login-username").value.trim();
    const password = byId("login-password").value;
    if (!username || !password) {
      store.notify("Enter your username and password.");
      return;
    }
    busy(loginForm, run(client.login(username, password)));
  });

  const registerForm = byId("register-form");
  registerForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const username = byId("register-username").value.trim();
    const email = byId("register-email").value.trim();
    const password = byId("register-password").value;
    const problem = !USERNAME_PATTERN.test(username)
      ? plainWords("invalid_username")
      : !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email)
        ? plainWords("invalid_email")
        : password.length < 8
          ? plainWords("weak_secret")
          : null;
    if (problem) {
      store.notify(problem);
      return;
    }
    busy(registerForm, run(client.register(username, email, password)));
  });

  return function render() {
    if (store.phase !== "auth") {
      byId("login-password").value = "";
      byId("register-password").value = "";
    }
  };
}

/** Disables a form's button while its request runs. */
function busy(form, promise) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  promise.finally(() => {
    button.disabled = false;
  });
}
