import t from 'tap';
import { churn, CYCLES } from '../churn-suite.js';

t.test(`vxlan: ${CYCLES} ADD/DEL cycles through the netd plugin leave nothing behind`, (t) => churn(t, 'vxlan'));
