// Pictures the page shows: snapshots on the hub (fetched with the token, as the hub
// requires) and pictures taken in the page, as object URLs, the newest few kept.

const KEEP = 60;

export class PictureCache {
  constructor(api, keep = KEEP) {
    this.api = api;
    this.keep = keep;
    this._urls = new Map(); // key -> Promise<object URL | null>, oldest first
  }

  // The object URL of the hub's snapshot at `link` (/api/snapshots/ID); null when it is
  // not kept any more (the hub keeps a bounded number) or cannot be read.
  get(link) {
    if (typeof link !== 'string' || !/^\/api\/snapshots\/[0-9a-f]{32}$/.test(link)) {
      return Promise.resolve(null);
    }
    const found = this._urls.get(link);
    if (found) {
      this._urls.delete(link); // most recently used: last
      this._urls.set(link, found);
      return found;
    }
    const loading = this.api.blob(link).then((blob) => URL.createObjectURL(blob), () => null);
    return this._remember(link, loading);
  }

  // Keep a picture made in the page (a Blob) under `key`; its object URL.
  put(key, blob) {
    const url = URL.createObjectURL(blob);
    this._remember(key, Promise.resolve(url));
    return url;
  }

  clear() {
    for (const promise of this._urls.values()) promise.then((url) => url && URL.revokeObjectURL(url));
    this._urls.clear();
  }

  _remember(key, promise) {
    const old = this._urls.get(key);
    this._urls.delete(key);
    old?.then((url) => url && URL.revokeObjectURL(url));
    this._urls.set(key, promise);
    while (this._urls.size > this.keep) {
      const [oldest, value] = this._urls.entries().next().value;
      this._urls.delete(oldest);
      value.then((url) => url && URL.revokeObjectURL(url));
    }
    return promise;
  }
}
