import t from 'tap';
import { ADDS, crashDuringAdds } from '../crash-suite.js';

t.test(
  `vlan: SIGKILL netd during a burst of ${ADDS} ADDs: after restart every container is fully wired or fully absent, no address leaked`,
  (t) => crashDuringAdds(t, 'vlan'),
);
