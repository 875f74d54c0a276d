// Where Debian installs nginx and its Nchan module (apt-get install nginx-light libnginx-mod-nchan):
// the bench, its smoke test and the Nchan server all ask here whether Nchan can run.
import { existsSync } from 'node:fs';

export const NGINX = '/usr/sbin/nginx';
export const NCHAN_MODULE = '/usr/lib/nginx/modules/ngx_nchan_module.so';

export function nchanInstalled() {
  return existsSync(NGINX) && existsSync(NCHAN_MODULE);
}
