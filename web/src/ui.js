// Small helpers every part of the screen uses: finding and making elements, the notice
// line, and errors and times as a person reads them.

export const $ = (id) => document.getElementById(id);

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

export function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

let noticeTimer = null;

export function showNotice(text, { info = false } = {}) {
  $('notice-text').textContent = text;
  $('notice').classList.toggle('info', info);
  $('notice').setAttribute('role', info ? 'status' : 'alert');
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, info ? 30_000 : 10_000);
}

export function hideNotice() {
  $('notice').hidden = true;
}

/** Why a change (edit, delete, reaction) did not happen, for a person. */
export function describeChange(error) {
  if (error.code === 'unavailable') return 'the server could not store it, try again';
  if (error.code === 'rate_limited') {
    return `too fast, try again in ${Math.ceil((error.retryAfterMs ?? 1_000) / 1000)} s`;
  }
  if (error.code === 'forbidden') return `not allowed (${error.message})`;
  return error.code ? describe(error) : error.message;
}

/** The error as a sentence a person understands. */
export function describe(error) {
  const what = {
    forbidden: 'Not allowed',
    bad_id: 'Not a valid id',
    bad_request: 'Refused',
    bad_frame: 'The client sent something the server did not understand',
    unavailable: 'The server could not store it; it will be retried',
    limit_exceeded: 'Limit reached',
    unsupported: 'Not supported by this server',
    rate_limited: 'Too fast, slow down',
  }[error.code];
  return what ? `${what}: ${error.message}` : error.message;
}

/** A request's failure: the server's error as a sentence, or what went wrong locally. */
export function describeFailure(error) {
  return error.code ? describe(error) : error.message;
}

const SVG = 'http://www.w3.org/2000/svg';

/** A bell with a slash (an SVG, so no emoji font is needed), read out as `label`. */
export function mutedIcon(label) {
  const svg = document.createElementNS(SVG, 'svg');
  for (const [name, value] of Object.entries({ viewBox: '0 0 24 24', width: '16', height: '16', class: 'muted-icon', role: 'img', 'aria-label': label })) {
    svg.setAttribute(name, value);
  }
  const title = document.createElementNS(SVG, 'title');
  title.textContent = label;
  const bell = document.createElementNS(SVG, 'path');
  bell.setAttribute('d', 'M12 22a2 2 0 0 0 2-2h-4a2 2 0 0 0 2 2zm6-6v-5c0-3.07-1.64-5.64-4.5-6.32V4a1.5 1.5 0 0 0-3 0v.68C7.63 5.36 6 7.92 6 11v5l-2 2v1h16v-1l-2-2z');
  bell.setAttribute('fill', 'currentColor');
  const slash = document.createElementNS(SVG, 'line');
  for (const [name, value] of Object.entries({ x1: '3', y1: '3', x2: '21', y2: '21', stroke: 'currentColor', 'stroke-width': '2.2' })) {
    slash.setAttribute(name, value);
  }
  svg.append(title, bell, slash);
  return svg;
}

/**
 * Shows popup `menu` below `anchor` (a box: a button's, or a pointer's), kept inside the
 * window; positions are set through the CSSOM, which the Content-Security-Policy allows,
 * unlike style attributes.
 */
export function placeMenu(menu, anchor) {
  menu.hidden = false;
  const box = menu.getBoundingClientRect();
  const left = Math.min(anchor.right - box.width, innerWidth - box.width - 8);
  const top = anchor.bottom + box.height + 8 > innerHeight ? anchor.top - box.height - 4 : anchor.bottom + 4;
  menu.style.left = `${Math.max(8, left)}px`;
  menu.style.top = `${Math.max(8, top)}px`;
  menu.querySelector('button')?.focus();
}

/** Arrow keys move between a menu's buttons, Escape closes it (`close()`), Tab leaves it
 * (`close({refocus: false})`). */
export function onMenuKey(menu, event, close) {
  const buttons = [...menu.querySelectorAll('button')];
  const at = buttons.indexOf(document.activeElement);
  const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
  if (step) {
    event.preventDefault();
    buttons[(at + step + buttons.length) % buttons.length].focus();
  } else if (event.key === 'Escape') {
    event.preventDefault();
    close();
  } else if (event.key === 'Tab') {
    close({ refocus: false });
  }
}
