// The HTTP calls of the web client: development sign-in, media upload and download.
//
// Every failure becomes an `Error` whose message a person can read: the server's own
// `message` when it sent one (its errors are JSON `{error, message}`), else the status.

/** `POST /v1/dev/sign-in`: a token for `user` (only where the gateway allows it). */
export async function signIn(user, device) {
  const response = await call('/v1/dev/sign-in', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, device }),
  });
  return response.json();
}

/**
 * `POST /v1/media`: uploads `file` and answers `{id, size, sha256, mime}`. A type the
 * server does not take (415 `unsupported_type`) is sent again as plain bytes, so any
 * file can go as a document.
 */
export async function upload(token, file) {
  const post = (mime) =>
    call('/v1/media', {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': mime },
      body: file,
    });
  const mime = file.type || 'application/octet-stream';
  try {
    return await (await post(mime)).json();
  } catch (error) {
    if (error.code !== 'unsupported_type' || mime === 'application/octet-stream') throw error;
    return (await post('application/octet-stream')).json();
  }
}

/** `GET /v1/media/<id>` as a Blob (the server wants the Bearer header, so no plain link). */
export async function downloadMedia(token, id) {
  const response = await call(`/v1/media/${encodeURIComponent(id)}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  return response.blob();
}

/** The size in bytes of media `id`, from a `HEAD` request. */
export async function mediaSize(token, id) {
  const response = await call(`/v1/media/${encodeURIComponent(id)}`, {
    method: 'HEAD',
    headers: { Authorization: `Bearer ${token}` },
  });
  return Number(response.headers.get('Content-Length'));
}

async function call(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new Error('The server cannot be reached. Check the connection and try again.');
  }
  if (response.ok) return response;
  let detail = {};
  try {
    detail = await response.json();
  } catch {
    // Not JSON: the status alone says what happened.
  }
  const error = new Error(detail.message || `The server answered ${response.status} ${response.statusText}.`);
  error.code = detail.error;
  error.status = response.status;
  throw error;
}
