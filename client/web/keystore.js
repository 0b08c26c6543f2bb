/**
 * IndexedDB storage of each user's end-to-end key pair in this browser.
 * The CryptoKey objects are stored as they are (structured clone): the
 * private key was created non-extractable, so neither this page nor any
 * script injected into it can read its bytes, only use it.
 */

const DATABASE = "chat-web";
const STORE = "keys";
const VERSION = 1;

function openDatabase() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DATABASE, VERSION);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(STORE, { keyPath: "username" });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function run(mode, action) {
  return openDatabase().then(
    (database) =>
      new Promise((resolve, reject) => {
        const transaction = database.transaction(STORE, mode);
        const request = action(transaction.objectStore(STORE));
        transaction.oncomplete = () => {
          database.close();
          resolve(request.result);
        };
        transaction.onabort = () => {
          database.close();
          reject(request.error ?? transaction.error);
        };
      }),
  );
}

/** The stored record `{username, privateKey, publicKey, publicBase64}`, or undefined. */
export function loadKeys(username) {
  return run("readonly", (store) => store.get(username));
}

/**
 * Stores a record unless one exists already for that user (another tab may
 * have created one meanwhile); resolves with the record that is kept.
 */
export async function saveKeysOnce(record) {
  try {
    await run("readwrite", (store) => store.add(record));
    return record;
  } catch (error) {
    if (error?.name !== "ConstraintError") throw error;
    return loadKeys(record.username);
  }
}
